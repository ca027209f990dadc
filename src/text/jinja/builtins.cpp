// Builtins of the Jinja interpreter with the semantics of Python and jinja2
// 3.1 (filters.py, tests.py, sandbox.py): operators, str/dict/list methods,
// filters and tests used by Hugging Face chat templates.
#include "text/jinja/builtins.h"

#include <algorithm>
#include <climits>
#include <cmath>

#include <utf8proc.h>

#include "core/error.h"

namespace glm::jinja {
namespace {

constexpr size_t kMaxBuilt = 64u << 20;  // bound on strings/lists built by * and range

std::u32string u32(const Value& v) { return utf8_decode(v.to_str()); }

char32_t upper_cp(char32_t c) { return static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c))); }
char32_t lower_cp(char32_t c) { return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))); }
bool is_cased_letter(char32_t c) {
  if (c > 0x10FFFF) return false;
  auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
}
bool is_word_char(char32_t c) {
  if (c < 0x80) return std::isalnum(static_cast<int>(c)) || c == '_';
  if (c > 0x10FFFF) return false;
  auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) || (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

std::string upper(const std::string& s) {
  std::u32string c = utf8_decode(s);
  for (auto& ch : c) ch = upper_cp(ch);
  return utf8_encode(c);
}
std::string lower(const std::string& s) {
  std::u32string c = utf8_decode(s);
  for (auto& ch : c) ch = lower_cp(ch);
  return utf8_encode(c);
}
// Python str.title(): a cased letter after an uncased character starts a word.
std::string py_title(const std::string& s) {
  std::u32string c = utf8_decode(s);
  bool prev_cased = false;
  for (auto& ch : c) {
    bool cased = is_cased_letter(ch);
    ch = cased ? (prev_cased ? lower_cp(ch) : upper_cp(ch)) : ch;
    prev_cased = cased;
  }
  return utf8_encode(c);
}
std::string capitalize(const std::string& s) {
  std::u32string c = utf8_decode(s);
  for (size_t i = 0; i < c.size(); ++i) c[i] = i == 0 ? upper_cp(c[i]) : lower_cp(c[i]);
  return utf8_encode(c);
}

// str.strip/lstrip/rstrip with optional chars (None: whitespace).
std::string py_strip(const std::string& s, const Value& chars, bool left, bool right) {
  std::u32string c = utf8_decode(s);
  std::u32string set;
  bool ws = chars.is_none() || chars.is_undefined();
  if (!ws) {
    if (!chars.is_string()) fail("strip arg must be None or str");
    set = utf8_decode(chars.str());
  }
  auto strip_me = [&](char32_t ch) { return ws ? is_py_space(ch) : set.find(ch) != std::u32string::npos; };
  size_t b = 0, e = c.size();
  if (left) while (b < e && strip_me(c[b])) ++b;
  if (right) while (e > b && strip_me(c[e - 1])) --e;
  return utf8_encode(std::u32string_view(c).substr(b, e - b));
}

List py_split(const std::string& s, const Value& sep, int64_t maxsplit) {
  List out;
  if (sep.is_none() || sep.is_undefined()) {
    std::u32string c = utf8_decode(s);
    size_t i = 0;
    while (true) {
      while (i < c.size() && is_py_space(c[i])) ++i;
      if (i >= c.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        size_t e = c.size();
        while (e > i && is_py_space(c[e - 1])) --e;
        out.push_back(Value(utf8_encode(std::u32string_view(c).substr(i, e - i))));
        break;
      }
      size_t j = i;
      while (j < c.size() && !is_py_space(c[j])) ++j;
      out.push_back(Value(utf8_encode(std::u32string_view(c).substr(i, j - i))));
      i = j;
    }
    return out;
  }
  if (!sep.is_string()) fail("must be str or None, not ", sep.type_name());
  const std::string& d = sep.str();
  if (d.empty()) fail("empty separator");
  size_t pos = 0;
  while (true) {
    size_t f = s.find(d, pos);
    if (f == std::string::npos || (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit)) {
      out.push_back(Value(s.substr(pos)));
      break;
    }
    out.push_back(Value(s.substr(pos, f - pos)));
    pos = f + d.size();
  }
  return out;
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& repl, int64_t count) {
  std::string out;
  if (old.empty()) {  // Python inserts between every character
    std::u32string c = utf8_decode(s);
    int64_t n = 0;
    for (size_t i = 0; i <= c.size(); ++i) {
      if (count < 0 || n < count) {
        out += repl;
        ++n;
      }
      if (i < c.size()) out += utf8_encode(std::u32string(1, c[i]));
    }
    return out;
  }
  size_t pos = 0;
  int64_t n = 0;
  while (true) {
    size_t f = s.find(old, pos);
    if (f == std::string::npos || (count >= 0 && n >= count)) break;
    out.append(s, pos, f - pos);
    out += repl;
    pos = f + old.size();
    ++n;
  }
  out.append(s, pos);
  return out;
}

int64_t to_int_arg(const Value& v, const char* what) {
  if (v.is_int() || v.is_bool()) return v.as_int();
  fail(what, " must be an integer, not '", v.type_name(), "'");
}

size_t py_len(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return 0;
    case Value::Kind::String: return utf8_decode(v.str()).size();
    case Value::Kind::List: return v.items().size();
    case Value::Kind::Dict:
    case Value::Kind::Namespace: return v.entries().size();
    default: fail("object of type '", v.type_name(), "' has no len()");
  }
}

List to_list(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List: return v.items();
    case Value::Kind::Dict: {
      List keys;
      for (const auto& [k, val] : v.entries()) keys.push_back(k);
      return keys;
    }
    case Value::Kind::String: {
      List chars;
      for (char32_t c : utf8_decode(v.str())) chars.push_back(Value(utf8_encode(std::u32string(1, c))));
      return chars;
    }
    default: fail("'", v.type_name(), "' object is not iterable");
  }
}

std::string type_repr(const Value& v) { return v.is_none() ? "None" : "'" + v.type_name() + " object'"; }

// str.format with {} / {0} / {name} fields and !r / !s conversions.
std::string py_format(const std::string& fmt, CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    char c = fmt[i];
    if (c == '{' && i + 1 < fmt.size() && fmt[i + 1] == '{') { out += '{'; ++i; continue; }
    if (c == '}' && i + 1 < fmt.size() && fmt[i + 1] == '}') { out += '}'; ++i; continue; }
    if (c == '}') fail("Single '}' encountered in format string");
    if (c != '{') { out += c; continue; }
    size_t end = fmt.find('}', i);
    if (end == std::string::npos) fail("Single '{' encountered in format string");
    std::string field = fmt.substr(i + 1, end - i - 1);
    i = end;
    char conv = 0;
    size_t bang = field.find('!');
    if (bang != std::string::npos) {
      conv = bang + 1 < field.size() ? field[bang + 1] : 0;
      field = field.substr(0, bang);
    }
    if (field.find(':') != std::string::npos) fail("format specs are not supported in str.format");
    Value v;
    if (field.empty()) {
      if (auto_index >= args.positional.size()) fail("Replacement index ", auto_index, " out of range for positional args tuple");
      v = args.positional[auto_index++];
    } else if (std::all_of(field.begin(), field.end(), ::isdigit)) {
      size_t idx = std::stoul(field);
      if (idx >= args.positional.size()) fail("Replacement index ", idx, " out of range for positional args tuple");
      v = args.positional[idx];
    } else {
      bool found = false;
      for (auto& [k, val] : args.keyword)
        if (k == field) { v = val; found = true; }
      if (!found) fail("KeyError: '", field, "'");
    }
    out += conv == 'r' ? v.repr() : v.to_str();
  }
  return out;
}

// printf-style `str % args` for %s %r %d %i %f %%.
std::string percent_format(const std::string& fmt, const Value& arg) {
  List args = arg.is_tuple() ? arg.items() : List{arg};
  size_t k = 0;
  std::string out;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') { out += fmt[i]; continue; }
    if (++i >= fmt.size()) fail("incomplete format");
    char t = fmt[i];
    if (t == '%') { out += '%'; continue; }
    if (k >= args.size()) fail("not enough arguments for format string");
    const Value& v = args[k++];
    if (t == 's') out += v.to_str();
    else if (t == 'r') out += v.repr();
    else if (t == 'd' || t == 'i') {
      if (!v.is_number()) fail("%d format: a real number is required, not ", v.type_name());
      out += std::to_string(v.is_float() ? static_cast<int64_t>(v.as_number()) : v.as_int());
    } else if (t == 'f') {
      char b[64];
      std::snprintf(b, sizeof b, "%f", v.as_number());
      out += b;
    } else fail("unsupported format character '", std::string(1, t), "'");
  }
  if (k < args.size()) fail("not all arguments converted during string formatting");
  return out;
}

Value unsafe_method(const std::string& type, const std::string& name) {
  return Value::function(name, [type, name](CallArgs&) -> Value {
    fail("access to attribute '", name, "' of '", type, "' object is unsafe.");
  });
}

Value string_method(const std::string& s, const std::string& name) {
  auto m = [&](Function f) { return Value::function("str." + name, std::move(f)); };
  if (name == "strip" || name == "lstrip" || name == "rstrip")
    return m([s, name](CallArgs& a) {
      return Value(py_strip(s, a.get(0, "chars"), name != "rstrip", name != "lstrip"));
    });
  if (name == "split" || name == "rsplit")
    return m([s, name](CallArgs& a) {
      Value ms = a.get(1, "maxsplit");
      int64_t maxsplit = ms.is_undefined() ? -1 : to_int_arg(ms, "maxsplit");
      if (name == "rsplit" && maxsplit >= 0) {
        // Split from the right: reverse, split with reversed separator, reverse back.
        Value sep = a.get(0, "sep");
        std::u32string rs = utf8_decode(s);
        std::reverse(rs.begin(), rs.end());
        Value rsep = sep;
        if (sep.is_string()) {
          std::u32string x = utf8_decode(sep.str());
          std::reverse(x.begin(), x.end());
          rsep = Value(utf8_encode(x));
        }
        List parts = py_split(utf8_encode(rs), rsep, maxsplit);
        std::reverse(parts.begin(), parts.end());
        for (auto& p : parts) {
          std::u32string x = utf8_decode(p.str());
          std::reverse(x.begin(), x.end());
          p = Value(utf8_encode(x));
        }
        return Value::list(std::move(parts));
      }
      return Value::list(py_split(s, a.get(0, "sep"), maxsplit));
    });
  if (name == "startswith" || name == "endswith")
    return m([s, name](CallArgs& a) {
      Value p = a.get(0, "prefix");
      List options = p.is_tuple() ? p.items() : List{p};
      for (const auto& o : options) {
        if (!o.is_string()) fail(name, " first arg must be str or a tuple of str, not ", o.type_name());
        const std::string& x = o.str();
        bool hit = name == "startswith" ? s.compare(0, x.size(), x) == 0
                                        : s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
        if (hit) return Value(true);
      }
      return Value(false);
    });
  if (name == "replace")
    return m([s](CallArgs& a) {
      Value old = a.get(0, "old"), repl = a.get(1, "new"), count = a.get(2, "count");
      if (!old.is_string() || !repl.is_string()) fail("replace() arguments must be str");
      return Value(py_replace(s, old.str(), repl.str(), count.is_undefined() ? -1 : to_int_arg(count, "count")));
    });
  if (name == "upper") return m([s](CallArgs&) { return Value(upper(s)); });
  if (name == "lower") return m([s](CallArgs&) { return Value(lower(s)); });
  if (name == "title") return m([s](CallArgs&) { return Value(py_title(s)); });
  if (name == "capitalize") return m([s](CallArgs&) { return Value(capitalize(s)); });
  if (name == "format") return m([s](CallArgs& a) { return Value(py_format(s, a)); });
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count")
    return m([s, name](CallArgs& a) {
      Value sub = a.get(0, "sub");
      if (!sub.is_string()) fail("must be str, not ", sub.type_name());
      if (name == "count") {
        if (sub.str().empty()) return Value(static_cast<int64_t>(utf8_decode(s).size() + 1));
        int64_t n = 0;
        for (size_t p = s.find(sub.str()); p != std::string::npos; p = s.find(sub.str(), p + sub.str().size())) ++n;
        return Value(n);
      }
      size_t p = (name == "find" || name == "index") ? s.find(sub.str()) : s.rfind(sub.str());
      if (p == std::string::npos) {
        if (name == "index" || name == "rindex") fail("substring not found");
        return Value(static_cast<int64_t>(-1));
      }
      return Value(static_cast<int64_t>(utf8_decode(s.substr(0, p)).size()));
    });
  if (name == "join")
    return m([s](CallArgs& a) {
      std::string out;
      List items = to_list(a.get(0, "iterable"));
      for (size_t i = 0; i < items.size(); ++i) {
        if (!items[i].is_string()) fail("sequence item ", i, ": expected str instance, ", items[i].type_name(), " found");
        if (i) out += s;
        out += items[i].str();
      }
      return Value(out);
    });
  if (name == "splitlines")
    return m([s](CallArgs&) {
      List out;
      std::string cur;
      for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\n' || s[i] == '\r') {
          out.push_back(Value(cur));
          cur.clear();
          if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
        } else {
          cur += s[i];
        }
      }
      if (!cur.empty()) out.push_back(Value(cur));
      return Value::list(std::move(out));
    });
  auto pred = [&](auto f) {
    return m([s, f](CallArgs&) {
      std::u32string c = utf8_decode(s);
      if (c.empty()) return Value(false);
      for (char32_t ch : c)
        if (!f(ch)) return Value(false);
      return Value(true);
    });
  };
  if (name == "isdigit") return pred([](char32_t c) { return c >= '0' && c <= '9'; });
  if (name == "isspace") return pred([](char32_t c) { return is_py_space(c); });
  if (name == "isalpha") return pred([](char32_t c) { return c < 0x80 ? std::isalpha(static_cast<int>(c)) != 0 : is_word_char(c); });
  if (name == "isalnum") return pred([](char32_t c) { return c < 0x80 ? std::isalnum(static_cast<int>(c)) != 0 : is_word_char(c); });
  if (name == "islower" || name == "isupper")
    return m([s, name](CallArgs&) {
      bool any = false;
      for (char32_t c : utf8_decode(s)) {
        if (!is_cased_letter(c)) continue;
        any = true;
        if ((name == "islower") != (lower_cp(c) == c)) return Value(false);
      }
      return Value(any);
    });
  return Value::undefined("'str object' has no attribute '" + name + "'");
}

Value dict_method(const Value& d, const std::string& name) {
  auto m = [&](Function f) { return Value::function("dict." + name, std::move(f)); };
  if (name == "items")
    return m([d](CallArgs&) {
      List out;
      for (const auto& [k, v] : d.entries()) out.push_back(Value::list({k, v}, true));
      return Value::list(std::move(out));
    });
  if (name == "keys")
    return m([d](CallArgs&) {
      List out;
      for (const auto& [k, v] : d.entries()) out.push_back(k);
      return Value::list(std::move(out));
    });
  if (name == "values")
    return m([d](CallArgs&) {
      List out;
      for (const auto& [k, v] : d.entries()) out.push_back(v);
      return Value::list(std::move(out));
    });
  if (name == "get")
    return m([d](CallArgs& a) {
      const Value* v = d.find(a.get(0, "key"));
      if (v) return *v;
      Value def = a.get(1, "default");
      return def.is_undefined() ? Value::none() : def;
    });
  if (name == "copy") return m([d](CallArgs&) { return Value::dict(d.entries()); });
  if (name == "pop" || name == "popitem" || name == "setdefault" || name == "update" || name == "clear")
    return unsafe_method("dict", name);
  return Value();
}

Value list_method(const Value& l, const std::string& name) {
  if (name == "index" || name == "count")
    return Value::function("list." + name, [l, name](CallArgs& a) {
      Value x = a.get(0, "value");
      int64_t n = 0;
      for (size_t i = 0; i < l.items().size(); ++i) {
        if (!equals(l.items()[i], x)) continue;
        if (name == "index") return Value(static_cast<int64_t>(i));
        ++n;
      }
      if (name == "index") fail(x.repr(), " is not in list");
      return Value(n);
    });
  if (name == "append" || name == "extend" || name == "insert" || name == "pop" || name == "remove" ||
      name == "reverse" || name == "sort" || name == "clear")
    return unsafe_method(l.is_tuple() ? "tuple" : "list", name);
  return Value();
}

[[noreturn]] void unsupported(const std::string& op, const Value& l, const Value& r) {
  if (l.is_undefined()) fail(l.undefined_hint());
  if (r.is_undefined()) fail(r.undefined_hint());
  if (op == "+" && l.is_string()) fail("can only concatenate str (not \"", r.type_name(), "\") to str");
  if (op == "+" && l.is_list()) fail("can only concatenate list (not \"", r.type_name(), "\") to list");
  fail("unsupported operand type(s) for ", op, ": '", l.type_name(), "' and '", r.type_name(), "'");
}

Value repeat(const Value& seq, int64_t n) {
  if (n <= 0) return seq.is_string() ? Value(std::string()) : Value::list({}, seq.is_tuple());
  if (seq.is_string()) {
    if (seq.str().size() * static_cast<size_t>(n) > kMaxBuilt || static_cast<size_t>(n) > kMaxBuilt) fail("string repetition result too large");
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += seq.str();
    return Value(out);
  }
  if (seq.items().size() * static_cast<size_t>(n) > kMaxBuilt / 16 || static_cast<size_t>(n) > kMaxBuilt) fail("list repetition result too large");
  List out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.items().begin(), seq.items().end());
  return Value::list(std::move(out), seq.is_tuple());
}

int64_t py_floordiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

Value do_round(const Value& v, int64_t precision, const std::string& method) {
  if (!v.is_number()) fail("type ", v.type_name(), " doesn't define __round__ method");
  if (v.is_int() && method == "common" && precision >= 0) return Value(v.as_int());
  double scale = std::pow(10.0, static_cast<double>(precision));
  double x = v.as_number() * scale;
  double r = method == "common" ? std::nearbyint(x) : method == "ceil" ? std::ceil(x) : method == "floor" ? std::floor(x)
                                                                                     : (fail("method must be common, ceil or floor"), 0.0);
  return Value(r / scale);
}

Value attribute_of(const Value& item, const Value& attr) {
  // `attribute="a.b"` walks dots; integer parts index, as jinja2's make_attrgetter.
  if (!attr.is_string()) return get_item(item, attr);
  Value cur = item;
  std::string path = attr.str();
  size_t pos = 0;
  while (true) {
    size_t dot = path.find('.', pos);
    std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit);
    if (cur.is_undefined()) fail(cur.undefined_hint());
    cur = numeric ? get_item(cur, Value(static_cast<int64_t>(std::stoll(part)))) : get_item(cur, Value(part));
    if (dot == std::string::npos) return cur;
    pos = dot + 1;
  }
}

int sort_compare(const Value& a, const Value& b, bool case_sensitive) {
  if (!case_sensitive && a.is_string() && b.is_string()) return compare(Value(lower(a.str())), Value(lower(b.str())));
  return compare(a, b);
}

}  // namespace

List iterable_items(const Value& v) { return to_list(v); }

Value get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::Dict: {
      Value m = dict_method(obj, name);
      if (!m.is_undefined()) return m;
      const Value* v = obj.find(Value(name));
      return v ? *v : Value::undefined("'dict object' has no attribute '" + name + "'");
    }
    case Value::Kind::Namespace: {
      const Value* v = obj.find(Value(name));
      return v ? *v : Value::undefined("'Namespace object' has no attribute '" + name + "'");
    }
    case Value::Kind::String: return string_method(obj.str(), name);
    case Value::Kind::List: {
      Value m = list_method(obj, name);
      if (!m.is_undefined()) return m;
      break;
    }
    default: break;
  }
  return Value::undefined(type_repr(obj) + " has no attribute '" + name + "'");
}

Value get_item(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::Dict:
    case Value::Kind::Namespace: {
      const Value* v = obj.find(key);
      if (v) return *v;
      break;
    }
    case Value::Kind::List:
      if (key.is_int() || key.is_bool()) {
        int64_t n = static_cast<int64_t>(obj.items().size());
        int64_t i = key.as_int();
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value::undefined(type_repr(obj) + " has no element " + key.repr());
        return obj.items()[static_cast<size_t>(i)];
      }
      break;
    case Value::Kind::String:
      if (key.is_int() || key.is_bool()) {
        std::u32string c = utf8_decode(obj.str());
        int64_t n = static_cast<int64_t>(c.size());
        int64_t i = key.as_int();
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value::undefined("'str object' has no element " + key.repr());
        return Value(utf8_encode(std::u32string(1, c[static_cast<size_t>(i)])));
      }
      break;
    default: break;
  }
  if (key.is_string()) {
    Value attr = get_attr(obj, key.str());
    if (!attr.is_undefined()) return attr;
  }
  return Value::undefined(type_repr(obj) + " has no element " + key.repr());
}

Value slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v) {
  auto opt = [](const Value& v) -> std::pair<bool, int64_t> {
    if (v.is_none() || v.is_undefined()) return {false, 0};
    if (!v.is_int() && !v.is_bool()) fail("slice indices must be integers or None");
    return {true, v.as_int()};
  };
  auto [has_start, start] = opt(start_v);
  auto [has_stop, stop] = opt(stop_v);
  auto [has_step, step] = opt(step_v);
  if (!has_step) step = 1;
  if (step == 0) fail("slice step cannot be zero");
  bool is_str = obj.is_string();
  if (!is_str && !obj.is_list()) fail("'", obj.type_name(), "' object is not subscriptable");
  std::u32string chars = is_str ? utf8_decode(obj.str()) : std::u32string();
  int64_t n = is_str ? static_cast<int64_t>(chars.size()) : static_cast<int64_t>(obj.items().size());
  // CPython's PySlice_AdjustIndices.
  auto adjust = [&](bool has, int64_t v, bool is_start) -> int64_t {
    if (!has) return step < 0 ? (is_start ? n - 1 : -1) : (is_start ? 0 : n);
    if (v < 0) {
      v += n;
      if (v < 0) v = step < 0 ? -1 : 0;
    } else if (v >= n) {
      v = step < 0 ? n - 1 : n;
    }
    return v;
  };
  int64_t b = adjust(has_start, start, true), e = adjust(has_stop, stop, false);
  std::u32string out_s;
  List out_l;
  for (int64_t i = b; step > 0 ? i < e : i > e; i += step) {
    if (is_str) out_s.push_back(chars[static_cast<size_t>(i)]);
    else out_l.push_back(obj.items()[static_cast<size_t>(i)]);
  }
  return is_str ? Value(utf8_encode(out_s)) : Value::list(std::move(out_l), obj.is_tuple());
}

Value binary_op(const std::string& op, const Value& l, const Value& r) {
  if (op == "~") return Value(l.to_str() + r.to_str());
  if (l.is_number() && r.is_number()) {
    bool fl = l.is_float() || r.is_float();
    if (op == "/") {
      if (r.as_number() == 0) fail("division by zero");
      return Value(l.as_number() / r.as_number());
    }
    if (fl) {
      double a = l.as_number(), b = r.as_number();
      if (op == "+") return Value(a + b);
      if (op == "-") return Value(a - b);
      if (op == "*") return Value(a * b);
      if (op == "**") return Value(std::pow(a, b));
      if (b == 0) fail("float division by zero");
      if (op == "//") return Value(std::floor(a / b));
      if (op == "%") {
        double m = std::fmod(a, b);
        if (m != 0 && ((m < 0) != (b < 0))) m += b;
        return Value(m);
      }
    } else {
      int64_t a = l.as_int(), b = r.as_int(), out;
      if (op == "+") { if (__builtin_add_overflow(a, b, &out)) fail("integer overflow"); return Value(out); }
      if (op == "-") { if (__builtin_sub_overflow(a, b, &out)) fail("integer overflow"); return Value(out); }
      if (op == "*") { if (__builtin_mul_overflow(a, b, &out)) fail("integer overflow"); return Value(out); }
      if (op == "**") {
        if (b < 0) return Value(std::pow(static_cast<double>(a), static_cast<double>(b)));
        int64_t res = 1;
        for (int64_t i = 0; i < b; ++i) {
          if (__builtin_mul_overflow(res, a, &res)) fail("integer overflow");
          if (res == 0 || res == 1) break;
        }
        return Value(res);
      }
      if (b == 0) fail("integer division or modulo by zero");
      if (op == "//") return Value(py_floordiv(a, b));
      if (op == "%") return Value(a - py_floordiv(a, b) * b);
    }
  }
  if (op == "+") {
    if (l.is_string() && r.is_string()) {
      if (l.str().size() + r.str().size() > kMaxBuilt * 4) fail("string too large");
      return Value(l.str() + r.str());
    }
    if (l.is_list() && r.is_list() && l.is_tuple() == r.is_tuple()) {
      List out = l.items();
      out.insert(out.end(), r.items().begin(), r.items().end());
      return Value::list(std::move(out), l.is_tuple());
    }
  }
  if (op == "*") {
    if ((l.is_string() || l.is_list()) && (r.is_int() || r.is_bool())) return repeat(l, r.as_int());
    if ((r.is_string() || r.is_list()) && (l.is_int() || l.is_bool())) return repeat(r, l.as_int());
  }
  if (op == "%" && l.is_string()) return Value(percent_format(l.str(), r));
  unsupported(op, l, r);
}

bool compare_op(const std::string& op, const Value& l, const Value& r) {
  if (op == "==") return equals(l, r);
  if (op == "!=") return !equals(l, r);
  if (op == "in" || op == "not in") {
    bool found;
    if (r.is_string()) {
      if (!l.is_string()) fail("'in <string>' requires string as left operand, not ", l.type_name());
      found = r.str().find(l.str()) != std::string::npos;
    } else if (r.is_list()) {
      found = std::any_of(r.items().begin(), r.items().end(), [&](const Value& x) { return equals(x, l); });
    } else if (r.is_dict() || r.is_namespace()) {
      found = r.find(l) != nullptr;
    } else if (r.is_undefined()) {
      found = false;
    } else {
      fail("argument of type '", r.type_name(), "' is not iterable");
    }
    return op == "in" ? found : !found;
  }
  if (l.is_undefined()) fail(l.undefined_hint());
  if (r.is_undefined()) fail(r.undefined_hint());
  int c;
  try {
    c = compare(l, r);
  } catch (const Error&) {
    fail("'", op, "' not supported between instances of '", l.type_name(), "' and '", r.type_name(), "'");
  }
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  if (op == ">=") return c >= 0;
  fail("unknown comparison ", op);
}

Value builtin_range(CallArgs& a) {
  int64_t start = 0, stop, step = 1;
  if (a.positional.size() == 1) {
    stop = to_int_arg(a.positional[0], "range() argument");
  } else if (a.positional.size() >= 2) {
    start = to_int_arg(a.positional[0], "range() argument");
    stop = to_int_arg(a.positional[1], "range() argument");
    if (a.positional.size() >= 3) step = to_int_arg(a.positional[2], "range() argument");
  } else {
    fail("range expected at least 1 argument, got 0");
  }
  if (step == 0) fail("range() arg 3 must not be zero");
  List out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (out.size() >= kMaxBuilt / 16) fail("range too big");
    out.push_back(Value(i));
  }
  return Value::list(std::move(out));
}

Value builtin_filter(const std::string& name, const Value& v, CallArgs& a) {
  if (name == "tojson") {
    JsonOptions o;
    o.ensure_ascii = a.get(0, "ensure_ascii").truthy();
    Value indent = a.get(1, "indent");
    if (!indent.is_undefined() && !indent.is_none()) {
      o.indent_set = true;
      if (indent.is_int()) o.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(indent.as_int(), 0, 1024)), ' ');
      else if (indent.is_string()) o.indent = indent.str();
      else fail("tojson indent must be an int or a string");
      o.item_separator = ",";
    }
    Value sep = a.get(2, "separators");
    if (!sep.is_undefined() && !sep.is_none()) {
      if (!sep.is_list() || sep.items().size() != 2 || !sep.items()[0].is_string() || !sep.items()[1].is_string())
        fail("tojson separators must be a pair of strings");
      o.item_separator = sep.items()[0].str();
      o.key_separator = sep.items()[1].str();
    }
    o.sort_keys = a.get(3, "sort_keys").truthy();
    return Value(dump_json(v, o));
  }
  if (name == "length" || name == "count") return Value(static_cast<int64_t>(py_len(v)));
  if (name == "string") return Value(v.to_str());
  if (name == "safe" || name == "e" || name == "escape" || name == "forceescape") {
    if (name == "safe") return v;
    std::string out;
    for (char c : v.to_str()) {
      switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&#34;"; break;
        case '\'': out += "&#39;"; break;
        default: out += c;
      }
    }
    return Value(out);
  }
  if (name == "trim") return Value(py_strip(v.to_str(), a.get(0, "chars"), true, true));
  if (name == "upper") return Value(upper(v.to_str()));
  if (name == "lower") return Value(lower(v.to_str()));
  if (name == "capitalize") return Value(capitalize(v.to_str()));
  if (name == "title") {
    // jinja2's do_title: words start after '-', whitespace and opening brackets.
    std::u32string c = utf8_decode(v.to_str());
    bool start = true;
    for (auto& ch : c) {
      bool sep = ch == '-' || is_py_space(ch) || ch == '(' || ch == '{' || ch == '[' || ch == '<';
      if (sep) { start = true; continue; }
      ch = start ? upper_cp(ch) : lower_cp(ch);
      start = false;
    }
    return Value(utf8_encode(c));
  }
  if (name == "replace") {
    Value count = a.get(2, "count");
    return Value(py_replace(v.to_str(), a.get(0, "old").to_str(), a.get(1, "new").to_str(),
                            count.is_undefined() || count.is_none() ? -1 : to_int_arg(count, "count")));
  }
  if (name == "default" || name == "d") {
    Value def = a.has(0, "default_value") ? a.get(0, "default_value") : Value(std::string());
    bool boolean = a.get(1, "boolean").truthy();
    if (v.is_undefined() || (boolean && !v.truthy())) return def;
    return v;
  }
  if (name == "first") {
    List items = to_list(v);
    return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
  }
  if (name == "last") {
    List items = to_list(v);
    return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
  }
  if (name == "list") return Value::list(to_list(v));
  if (name == "reverse") {
    if (v.is_string()) {
      std::u32string c = utf8_decode(v.str());
      std::reverse(c.begin(), c.end());
      return Value(utf8_encode(c));
    }
    List items = to_list(v);
    std::reverse(items.begin(), items.end());
    return Value::list(std::move(items));
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::list({});
    if (!v.is_dict()) fail("Can only get item pairs from a mapping.");
    List out;
    for (const auto& [k, val] : v.entries()) out.push_back(Value::list({k, val}, true));
    return Value::list(std::move(out));
  }
  if (name == "dictsort") {
    if (!v.is_dict()) fail("dictsort filter expects a mapping");
    bool cs = a.get(0, "case_sensitive").truthy();
    Value by = a.get(1, "by");
    bool by_value = by.is_string() && by.str() == "value";
    if (by.is_string() && by.str() != "key" && by.str() != "value") fail("You can only sort by either \"key\" or \"value\"");
    bool rev = a.get(2, "reverse").truthy();
    Dict entries = v.entries();
    std::stable_sort(entries.begin(), entries.end(), [&](const auto& x, const auto& y) {
      int c = by_value ? sort_compare(x.second, y.second, cs) : sort_compare(x.first, y.first, cs);
      return rev ? c > 0 : c < 0;
    });
    List out;
    for (auto& [k, val] : entries) out.push_back(Value::list({k, val}, true));
    return Value::list(std::move(out));
  }
  if (name == "sort") {
    List items = to_list(v);
    bool rev = a.get(0, "reverse").truthy();
    bool cs = a.get(1, "case_sensitive").truthy();
    Value attr = a.get(2, "attribute");
    std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
      Value kx = attr.is_undefined() || attr.is_none() ? x : attribute_of(x, attr);
      Value ky = attr.is_undefined() || attr.is_none() ? y : attribute_of(y, attr);
      int c = sort_compare(kx, ky, cs);
      return rev ? c > 0 : c < 0;
    });
    return Value::list(std::move(items));
  }
  if (name == "unique") {
    List items = to_list(v);
    bool cs = a.get(0, "case_sensitive").truthy();
    Value attr = a.get(1, "attribute");
    List out, seen;
    for (const auto& item : items) {
      Value key = attr.is_undefined() || attr.is_none() ? item : attribute_of(item, attr);
      if (!cs && key.is_string()) key = Value(lower(key.str()));
      if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, key); })) continue;
      seen.push_back(key);
      out.push_back(item);
    }
    return Value::list(std::move(out));
  }
  if (name == "join") {
    Value sep = a.has(0, "d") ? a.get(0, "d") : Value(std::string());
    Value attr = a.get(1, "attribute");
    std::string out;
    List items = to_list(v);
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += sep.to_str();
      out += (attr.is_undefined() || attr.is_none() ? items[i] : attribute_of(items[i], attr)).to_str();
    }
    return Value(out);
  }
  if (name == "int") {
    Value def = a.has(0, "default") ? a.get(0, "default") : Value(static_cast<int64_t>(0));
    if (v.is_int() || v.is_bool()) return Value(v.as_int());
    if (v.is_float()) {
      double d = v.as_number();
      if (!std::isfinite(d) || std::fabs(d) > 9.2e18) return def;
      return Value(static_cast<int64_t>(d));
    }
    if (v.is_string()) {
      std::string s = py_strip(v.str(), Value::none(), true, true);
      std::string digits;
      for (char c : s) if (c != '_') digits += c;
      try {
        size_t used = 0;
        long long n = std::stoll(digits, &used, 10);
        if (used == digits.size() && !digits.empty()) return Value(static_cast<int64_t>(n));
        double d = std::stod(digits, &used);
        if (used == digits.size() && std::isfinite(d) && std::fabs(d) < 9.2e18) return Value(static_cast<int64_t>(d));
      } catch (const std::exception&) {
      }
    }
    return def;
  }
  if (name == "float") {
    Value def = a.has(0, "default") ? a.get(0, "default") : Value(0.0);
    if (v.is_number()) return Value(v.as_number());
    if (v.is_string()) {
      std::string s = py_strip(v.str(), Value::none(), true, true);
      try {
        size_t used = 0;
        double d = std::stod(s, &used);
        if (used == s.size() && !s.empty()) return Value(d);
      } catch (const std::exception&) {
      }
    }
    return def;
  }
  if (name == "abs") {
    if (v.is_float()) return Value(std::fabs(v.as_number()));
    if (v.is_number()) return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
    fail("bad operand type for abs(): '", v.type_name(), "'");
  }
  if (name == "round") {
    Value p = a.get(0, "precision");
    Value method = a.get(1, "method");
    return do_round(v, p.is_undefined() ? 0 : to_int_arg(p, "precision"), method.is_string() ? method.str() : "common");
  }
  if (name == "indent") {
    Value w = a.get(0, "width");
    std::string ind = w.is_undefined() ? "    " : w.is_string() ? w.str() : std::string(static_cast<size_t>(std::clamp<int64_t>(to_int_arg(w, "width"), 0, 1024)), ' ');
    bool first = a.get(1, "first").truthy(), blank = a.get(2, "blank").truthy();
    std::string s = v.to_str() + "\n";
    std::vector<std::string> lines;
    std::string cur;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\n' || s[i] == '\r') {
        lines.push_back(cur);
        cur.clear();
        if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
      } else {
        cur += s[i];
      }
    }
    if (!cur.empty()) lines.push_back(cur);
    std::string rv;
    if (blank) {
      for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + ind : "") + lines[i];
    } else {
      rv = lines.empty() ? "" : lines[0];
      for (size_t i = 1; i < lines.size(); ++i) rv += "\n" + (lines[i].empty() ? lines[i] : ind + lines[i]);
    }
    if (first) rv = ind + rv;
    return Value(rv);
  }
  if (name == "wordcount") {
    int64_t n = 0;
    bool in_word = false;
    for (char32_t c : u32(v)) {
      bool w = is_word_char(c);
      if (w && !in_word) ++n;
      in_word = w;
    }
    return Value(n);
  }
  if (name == "center") {
    Value w = a.get(0, "width");
    int64_t width = w.is_undefined() ? 80 : to_int_arg(w, "width");
    std::u32string c = u32(v);
    int64_t pad = std::min<int64_t>(width, 100000) - static_cast<int64_t>(c.size());
    if (pad <= 0) return Value(v.to_str());
    int64_t left = pad / 2 + (pad & width & 1);
    return Value(std::string(left, ' ') + v.to_str() + std::string(pad - left, ' '));
  }
  if (name == "sum") {
    Value attr = a.get(0, "attribute");
    Value total = a.has(1, "start") ? a.get(1, "start") : Value(static_cast<int64_t>(0));
    for (const auto& item : to_list(v)) total = binary_op("+", total, attr.is_undefined() ? item : attribute_of(item, attr));
    return total;
  }
  if (name == "min" || name == "max") {
    List items = to_list(v);
    if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
    bool cs = a.get(0, "case_sensitive").truthy();
    Value attr = a.get(1, "attribute");
    Value best = items[0];
    for (const auto& item : items) {
      Value x = attr.is_undefined() ? item : attribute_of(item, attr);
      Value y = attr.is_undefined() ? best : attribute_of(best, attr);
      int c = sort_compare(x, y, cs);
      if (name == "min" ? c < 0 : c > 0) best = item;
    }
    return best;
  }
  if (name == "attr") return get_attr(v, a.get(0, "name").to_str());
  if (name == "batch") {
    Value n = a.get(0, "linecount");
    int64_t size = to_int_arg(n, "linecount");
    if (size <= 0) fail("batch size must be positive");
    Value fill = a.get(1, "fill_with");
    List out, cur;
    for (const auto& item : to_list(v)) {
      cur.push_back(item);
      if (static_cast<int64_t>(cur.size()) == size) {
        out.push_back(Value::list(std::move(cur)));
        cur.clear();
      }
    }
    if (!cur.empty()) {
      if (!fill.is_undefined() && !fill.is_none())
        while (static_cast<int64_t>(cur.size()) < size) cur.push_back(fill);
      out.push_back(Value::list(std::move(cur)));
    }
    return Value::list(std::move(out));
  }
  if (name == "format") return Value(percent_format(v.to_str(), Value::list(a.positional, true)));
  fail("no filter named '", name, "'");
}

Value higher_order_filter(const std::string& name, const Value& input, CallArgs& a, const FilterCaller& caller) {
  List items = to_list(input);
  List out;
  if (name == "map") {
    Value attr = a.get(99, "attribute");
    if (!attr.is_undefined()) {
      Value def = a.get(99, "default");
      for (const auto& item : items) {
        Value x = attribute_of(item, attr);
        out.push_back(x.is_undefined() && !def.is_undefined() ? def : x);
      }
      return Value::list(std::move(out));
    }
    if (a.positional.empty()) fail("map requires a filter argument");
    if (!a.positional[0].is_string()) fail("map filter name must be a string");
    std::string fname = a.positional[0].str();
    CallArgs rest;
    rest.positional.assign(a.positional.begin() + 1, a.positional.end());
    rest.keyword = a.keyword;
    for (const auto& item : items) out.push_back(caller.filter(fname, item, rest));
    return Value::list(std::move(out));
  }
  bool by_attr = name == "selectattr" || name == "rejectattr";
  bool keep_if = name == "select" || name == "selectattr";
  size_t first_test = by_attr ? 1 : 0;
  if (by_attr && a.positional.empty()) fail(name, " requires an attribute name");
  std::string test;
  if (a.positional.size() > first_test) {
    if (!a.positional[first_test].is_string()) fail(name, " test name must be a string");
    test = a.positional[first_test].str();
  }
  CallArgs rest;
  if (a.positional.size() > first_test + 1) rest.positional.assign(a.positional.begin() + first_test + 1, a.positional.end());
  rest.keyword = a.keyword;
  for (const auto& item : items) {
    Value x = by_attr ? attribute_of(item, a.positional[0]) : item;
    bool r = test.empty() ? x.truthy() : caller.test(test, x, rest);
    if (r == keep_if) out.push_back(item);
  }
  return Value::list(std::move(out));
}

bool apply_test(const std::string& name, const Value& v, CallArgs& a) {
  auto arg = [&]() { return a.get(0, "other"); };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.as_bool();
  if (name == "false") return v.is_bool() && !v.as_bool();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
  if (name == "sequence") return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
  if (name == "callable") return v.is_function();
  if (name == "in") return compare_op("in", v, a.get(0, "seq"));
  if (name == "eq" || name == "equalto" || name == "==") return equals(v, arg());
  if (name == "ne" || name == "!=") return !equals(v, arg());
  if (name == "lt" || name == "lessthan" || name == "<") return compare_op("<", v, arg());
  if (name == "le" || name == "<=") return compare_op("<=", v, arg());
  if (name == "gt" || name == "greaterthan" || name == ">") return compare_op(">", v, arg());
  if (name == "ge" || name == ">=") return compare_op(">=", v, arg());
  if (name == "sameas") {
    Value o = arg();
    if (v.kind() != o.kind()) return false;
    if (v.is_none() || v.is_bool() || v.is_undefined()) return equals(v, o);
    return false;
  }
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (!v.is_int() && !v.is_bool()) fail("test '", name, "' needs an integer, not ", v.type_name());
    if (name == "divisibleby") {
      int64_t n = to_int_arg(a.get(0, "num"), "divisibleby argument");
      if (n == 0) fail("integer division or modulo by zero");
      return v.as_int() % n == 0;
    }
    return (v.as_int() % 2 != 0) == (name == "odd");
  }
  if (name == "lower") return v.is_string() && lower(v.str()) == v.str();
  if (name == "upper") return v.is_string() && upper(v.str()) == v.str();
  if (name == "escaped") return false;
  fail("no test named '", name, "'");
}

}  // namespace glm::jinja
