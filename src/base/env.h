// The one reader of environment variables for src/ and every transport: integers in a range,
// sizes with K/M/G suffixes, booleans and strings. It is the lowest layer of m2n (services < src
// < transports sit above it; it knows neither): compiled into the object library m2n_base that
// both src/ and transports/ link.
//
// One rule everywhere: an absent or empty variable gives the caller's default; a value that does
// not parse, or lies outside the range, is InvalidArgument naming the variable and the value. No
// reader falls back silently on a bad value: an operator who sets a variable means it.
#pragma once

#include <cstdint>
#include <string>

#include "m2n/status.h"

namespace m2n::env {

// Whether `name` is present and not empty.
bool IsSet(const char* name);

// A whole number in [min, max]: decimal (an optional '-'), or hexadecimal with a 0x prefix.
StatusOr<int64_t> Int(const char* name, int64_t min, int64_t max, int64_t fallback);

// A byte count in [min, max]: decimal digits with an optional K, M or G suffix (powers of two,
// either case), e.g. 4M.
StatusOr<uint64_t> Size(const char* name, uint64_t min, uint64_t max, uint64_t fallback);

// 1 / 0, true / false, yes / no, on / off (any case).
StatusOr<bool> Bool(const char* name, bool fallback);

// The value as written.
std::string String(const char* name, std::string fallback);

// The same parsers on a value already in hand (`name` only for the error message); for values that
// come from elsewhere than the environment, and for the tests.
StatusOr<int64_t> ParseInt(const char* name, const std::string& text, int64_t min, int64_t max);
StatusOr<uint64_t> ParseSize(const char* name, const std::string& text, uint64_t min, uint64_t max);
StatusOr<bool> ParseBool(const char* name, const std::string& text);

}  // namespace m2n::env
