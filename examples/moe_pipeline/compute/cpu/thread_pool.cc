#include "compute/cpu/thread_pool.h"

#include <algorithm>

namespace moe::cpu {

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < std::max(threads, 1); ++i)
    workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  start_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::ParallelFor(int n, int grain, const std::function<void(int, int)>& body) {
  if (n <= 0) return;
  const int chunks = std::min(threads(), std::max(1, n / std::max(grain, 1)));
  if (chunks <= 1) {
    body(0, n);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    body_ = &body;
    n_ = n;
    chunks_ = chunks;
    pending_ = chunks - 1;
    ++generation_;
  }
  start_.notify_all();
  body(0, n / chunks);  // chunk 0 on the caller's thread
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return pending_ == 0; });
  body_ = nullptr;
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  while (true) {
    std::unique_lock<std::mutex> lock(mutex_);
    start_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    if (index >= chunks_) continue;
    const auto* body = body_;
    const int begin = static_cast<int>(int64_t{n_} * index / chunks_);
    const int end = static_cast<int>(int64_t{n_} * (index + 1) / chunks_);
    lock.unlock();
    (*body)(begin, end);
    lock.lock();
    if (--pending_ == 0) done_.notify_all();
  }
}

}  // namespace moe::cpu
