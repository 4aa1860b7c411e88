// A small JSON value: enough for model configs (config.json), safetensors headers and the metrics
// file. Parse errors say where (byte offset, line) and what was expected.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "m2n/status.h"

namespace moe {

class Json {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  Json() = default;
  static Json Bool(bool b);
  static Json Number(double d);
  static Json String(std::string s);
  static Json Array();
  static Json Object();

  // `what` names the text in error messages ("configs/tiny.json").
  static m2n::StatusOr<Json> Parse(std::string_view text, std::string_view what);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_number() const { return type_ == Type::kNumber; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_object() const { return type_ == Type::kObject; }
  bool is_array() const { return type_ == Type::kArray; }
  bool as_bool() const { return bool_; }
  double as_number() const { return number_; }
  const std::string& as_string() const { return string_; }
  const std::vector<Json>& items() const { return items_; }
  // Object members in key order.
  const std::map<std::string, Json>& members() const { return members_; }
  // nullptr when absent or not an object.
  const Json* Find(std::string_view key) const;

  // Builders.
  Json& Set(const std::string& key, Json value);
  Json& Push(Json value);

  // Compact when indent < 0, else pretty with `indent` spaces.
  std::string Dump(int indent = -1) const;

 private:
  void DumpTo(std::string* out, int indent, int depth) const;
  Type type_ = Type::kNull;
  bool bool_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<Json> items_;
  std::map<std::string, Json> members_;
};

}  // namespace moe
