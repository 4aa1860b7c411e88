// Fuzzes the bootstrap store's frame codec (src/bootstrap/wire.h): the bytes every store server
// reads from any connection and every client reads from the store.
//
// The input is read twice: as one whole frame (DecodeFrame), and as a stream of frames cut the way
// the server and the client cut their receive buffers (DecodeHeader as soon as 12 bytes are there,
// then DecodeBody once the announced body is). Neither may crash, read out of bounds or allocate
// more than the announced limits; what decodes must re-encode to the same bytes.
#include <cstddef>
#include <cstdint>
#include <span>
#include <variant>

#include "bootstrap/wire.h"
#include "fuzz/fuzz_check.h"

namespace m2n::bootstrap::wire {
namespace {

void CheckRoundTrip(const Message& message, std::span<const std::byte> frame) {
  StatusOr<Bytes> again = EncodeFrame(message);
  M2N_FUZZ_CHECK(again.ok());  // the decoder accepts only what the encoder may send
  M2N_FUZZ_CHECK(again->size() == frame.size());
  M2N_FUZZ_CHECK(std::equal(again->begin(), again->end(), frame.begin()));
  StatusOr<Message> decoded = DecodeFrame(*again);
  M2N_FUZZ_CHECK(decoded.ok() && *decoded == message);
}

void DecodeAsStream(std::span<const std::byte> stream) {
  while (stream.size() >= kHeaderBytes) {
    StatusOr<FrameHeader> header = DecodeHeader(stream);
    if (!header.ok()) {
      M2N_FUZZ_CHECK(!header.status().message().empty());
      return;  // the connection would be refused here
    }
    M2N_FUZZ_CHECK(header->body_bytes <= MaxBodyBytes(header->type));
    const size_t frame_bytes = kHeaderBytes + header->body_bytes;
    if (stream.size() < frame_bytes) return;  // a reader waits for the rest
    StatusOr<Message> message =
        DecodeBody(header->type, stream.subspan(kHeaderBytes, header->body_bytes));
    if (!message.ok()) return;
    M2N_FUZZ_CHECK(TypeOf(*message) == header->type);
    CheckRoundTrip(*message, stream.first(frame_bytes));
    stream = stream.subspan(frame_bytes);
  }
}

}  // namespace
}  // namespace m2n::bootstrap::wire

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace m2n::bootstrap::wire;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  m2n::StatusOr<Message> whole = DecodeFrame(bytes);
  if (whole.ok()) CheckRoundTrip(*whole, bytes);
  DecodeAsStream(bytes);
  return 0;
}
