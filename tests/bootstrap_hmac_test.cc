// SHA-256 and HMAC-SHA256 (src/bootstrap/hmac.h) against the standards' own vectors: FIPS 180-4's
// examples (NIST CSRC), the padding edges, and RFC 4231's HMAC-SHA256 test cases (5, a truncated
// MAC, is not used here). Plus the constant-time compare.
#include <string>
#include <string_view>

#include <gtest/gtest.h>

#include "bootstrap/hmac.h"
#include "bootstrap_test_util.h"

namespace m2n::bootstrap {
namespace {

std::string Hex(const Sha256Digest& d) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (std::byte b : d) {
    out += kDigits[std::to_integer<int>(b) >> 4];
    out += kDigits[std::to_integer<int>(b) & 15];
  }
  return out;
}

Bytes Repeat(uint8_t byte, size_t n) { return Bytes(n, std::byte{byte}); }

TEST(Sha256Test, Fips180Examples) {
  EXPECT_EQ(Hex(Sha256Of(ToBytes("abc"))),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Hex(Sha256Of(ToBytes(""))),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Hex(Sha256Of(ToBytes("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Hex(Sha256Of(Repeat('a', 1000000))),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, PaddingEdgesAndPiecewiseUpdates) {
  // 55 bytes: the length still fits the last block; 64: the padding needs a block of its own.
  EXPECT_EQ(Hex(Sha256Of(Repeat('a', 55))),
            "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
  EXPECT_EQ(Hex(Sha256Of(Repeat('a', 64))),
            "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
  const Bytes million = Repeat('a', 1000000);
  Sha256 h;
  for (size_t at = 0, step = 1; at < million.size(); at += step, step = step % 97 + 1) {
    h.Update(std::span<const std::byte>(million).subspan(at, std::min(step, million.size() - at)));
  }
  EXPECT_EQ(Hex(h.Finish()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(HmacSha256Test, Rfc4231TestCases) {
  Bytes key4;
  for (int i = 1; i <= 25; ++i) key4.push_back(static_cast<std::byte>(i));
  EXPECT_EQ(Hex(HmacSha256(Repeat(0x0b, 20), ToBytes("Hi There"))),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(Hex(HmacSha256(ToBytes("Jefe"), ToBytes("what do ya want for nothing?"))),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(Hex(HmacSha256(Repeat(0xaa, 20), Repeat(0xdd, 50))),
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
  EXPECT_EQ(Hex(HmacSha256(key4, Repeat(0xcd, 50))),
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
  EXPECT_EQ(Hex(HmacSha256(Repeat(0xaa, 131),
                           ToBytes("Test Using Larger Than Block-Size Key - Hash Key First"))),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  EXPECT_EQ(
      Hex(HmacSha256(
          Repeat(0xaa, 131),
          ToBytes("This is a test using a larger than block-size key and a larger than block-size "
                  "data. The key needs to be hashed before being used by the HMAC algorithm."))),
      "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}

TEST(HmacSha256Test, ConstantTimeEqualComparesEveryByteAndTheSize) {
  const Bytes a = Repeat(1, 32);
  Bytes b = a;
  EXPECT_TRUE(ConstantTimeEqual(a, b));
  b[31] = std::byte{2};
  EXPECT_FALSE(ConstantTimeEqual(a, b));
  b = a;
  b[0] = std::byte{0};
  EXPECT_FALSE(ConstantTimeEqual(a, b));
  EXPECT_FALSE(ConstantTimeEqual(a, Repeat(1, 31)));
  EXPECT_TRUE(ConstantTimeEqual({}, {}));
}

}  // namespace
}  // namespace m2n::bootstrap
