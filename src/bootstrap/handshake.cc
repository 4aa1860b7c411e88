// The store's HELLO handshake (handshake.h): nonces, the MAC both sides compute, and the job key's
// checks.
#include "bootstrap/handshake.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "bootstrap/socket.h"
#include "bootstrap/wire.h"

namespace m2n::bootstrap {
namespace {

void PutField(Bytes& out, std::span<const std::byte> bytes) {
  const uint32_t n = static_cast<uint32_t>(bytes.size());
  for (int shift = 0; shift < 32; shift += 8) out.push_back(static_cast<std::byte>(n >> shift));
  out.insert(out.end(), bytes.begin(), bytes.end());
}
void PutField(Bytes& out, std::string_view s) {
  PutField(out, std::as_bytes(std::span(s.data(), s.size())));
}

}  // namespace

StatusOr<Bytes> NewNonce() {
  Bytes nonce(wire::kNonceBytes);
  size_t got = 0;
  while (got < nonce.size()) {
    ssize_t n = getrandom(nonce.data() + got, nonce.size() - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return InternalError("bootstrap: getrandom for a handshake nonce: " + ErrnoText(errno));
    got += static_cast<size_t>(n);
  }
  return nonce;
}

Sha256Digest HandshakeMac(HandshakeRole role, std::span<const std::byte> key,
                          const std::string& job_id, int rank, int world_size,
                          std::span<const std::byte> rank_nonce,
                          std::span<const std::byte> store_nonce) {
  // Every field carries its length, so no two different field lists give the same bytes.
  Bytes message;
  PutField(message, role == HandshakeRole::kStore ? std::string_view("m2n store")
                                                  : std::string_view("m2n rank"));
  PutField(message, job_id);
  PutField(message, std::to_string(rank) + "/" + std::to_string(world_size));
  PutField(message, rank_nonce);
  PutField(message, store_nonce);
  return HmacSha256(key, message);
}

Status CheckJobKey(const std::string& key, const std::string& source) {
  if (key.empty() || key.size() >= kMinJobKeyBytes) return OkStatus();
  return InvalidArgumentError("bootstrap: the job key from " + source + " is " +
                              std::to_string(key.size()) + " bytes; it must be at least " +
                              std::to_string(kMinJobKeyBytes) +
                              " (e.g. the output of `openssl rand -hex 32`)");
}

StatusOr<std::string> ReadJobKeyFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0)
    return FailedPreconditionError("bootstrap: cannot open the job key file " + path + ": " +
                                   ErrnoText(errno));
  UniqueFd file(fd);
  struct stat st {};
  if (fstat(fd, &st) != 0)
    return FailedPreconditionError("bootstrap: fstat " + path + ": " + ErrnoText(errno));
  if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return FailedPreconditionError(
        "bootstrap: the job key file " + path + " (mode " + mode +
        ") must be a regular file of this user that only this user can read: "
        "chmod 600 " +
        path);
  }
  std::string key;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return FailedPreconditionError("bootstrap: reading the job key file " + path + ": " +
                                     ErrnoText(errno));
    if (n == 0) break;
    key.append(buf, static_cast<size_t>(n));
    if (key.size() > (size_t{1} << 16))
      return InvalidArgumentError("bootstrap: the job key file " + path + " is over 64 KiB");
  }
  while (!key.empty() && (key.back() == '\n' || key.back() == '\r')) key.pop_back();
  if (key.empty()) return InvalidArgumentError("bootstrap: the job key file " + path + " is empty");
  M2N_RETURN_IF_ERROR(CheckJobKey(key, path));
  return key;
}

bool IsLoopbackHost(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

}  // namespace m2n::bootstrap
