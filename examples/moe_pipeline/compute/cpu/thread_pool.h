// A fixed set of threads that run one parallel loop at a time (the caller's thread takes a share).
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace moe::cpu {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);  // threads >= 1, the caller's included
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }
  // Runs body(begin, end) over [0, n) cut into contiguous chunks of at least `grain`; returns when
  // all are done.
  void ParallelFor(int n, int grain, const std::function<void(int, int)>& body);

 private:
  void WorkerLoop(int index);
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable start_;
  std::condition_variable done_;
  const std::function<void(int, int)>* body_ = nullptr;
  int n_ = 0;
  int chunks_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace moe::cpu
