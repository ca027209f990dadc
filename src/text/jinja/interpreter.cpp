// Evaluation of a parsed Jinja template: scoping as jinja2 compiles it (each
// for-loop iteration and macro call gets a fresh scope; `if` does not),
// expression semantics of Python, and the environment transformers builds
// (sandboxed, immutable lists/dicts, loopcontrols, its globals).
#include <chrono>
#include <cmath>
#include <ctime>
#include <unordered_map>

#include "core/error.h"
#include "text/jinja/ast.h"
#include "text/jinja/builtins.h"
#include "text/jinja/template.h"

namespace glm::jinja {

namespace {

// Bounds so hostile templates fail with an Error instead of hanging or
// exhausting the stack or memory.
constexpr int kMaxCallDepth = 400;
constexpr long long kMaxSteps = 5'000'000;
constexpr size_t kMaxOutput = 256u << 20;

struct Scope {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Scope> parent;
  const Value* lookup(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent.get()) {
      auto it = s->vars.find(name);
      if (it != s->vars.end()) return &it->second;
    }
    return nullptr;
  }
};
using ScopePtr = std::shared_ptr<Scope>;

enum class Flow { Normal, Break, Continue };

[[noreturn]] void runtime_error(int line, const std::string& what) {
  fail("jinja: error at line ", line, ": ", what);
}

class Interpreter {
 public:
  explicit Interpreter(ScopePtr globals) : globals_(std::move(globals)) {}

  Flow exec(const Body& body, const ScopePtr& scope, std::string& out, int loop_depth) {
    for (const auto& node : body) {
      Flow f = exec_node(*node, scope, out, loop_depth);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

 private:
  void step(int line) {
    if (++steps_ > kMaxSteps) runtime_error(line, "template execution limit exceeded");
  }

  void append(std::string& out, const std::string& s, int line) {
    if (out.size() + s.size() > kMaxOutput) runtime_error(line, "rendered output too large");
    out += s;
  }

  Flow exec_node(const Node& n, const ScopePtr& scope, std::string& out, int loop_depth) {
    step(n.line);
    switch (n.kind) {
      case Node::Kind::Text: append(out, n.text, n.line); return Flow::Normal;
      case Node::Kind::Output: append(out, eval(*n.expr, scope).to_str(), n.line); return Flow::Normal;
      case Node::Kind::If:
        for (const auto& [cond, body] : n.branches) {
          if (!cond || eval(*cond, scope).truthy()) return exec(body, scope, out, loop_depth);
        }
        return Flow::Normal;
      case Node::Kind::For: exec_for(n, scope, out); return Flow::Normal;
      case Node::Kind::Set: {
        Value v = eval(*n.expr, scope);
        if (!n.attr.empty()) {
          const Value* target = scope->lookup(n.targets[0]);
          if (!target || !target->is_namespace())
            runtime_error(n.line, "cannot assign attribute on non-namespace object '" + n.targets[0] + "'");
          if (!n.attr.empty() && n.attr[0] == '_')
            runtime_error(n.line, "chat templates cannot store underscore-prefixed attributes on a namespace");
          Dict& d = target->mutable_entries();
          for (auto& [k, val] : d)
            if (k.is_string() && k.str() == n.attr) {
              val = v;
              return Flow::Normal;
            }
          d.emplace_back(Value(n.attr), v);
          return Flow::Normal;
        }
        assign(n.targets, v, *scope, n.line);
        return Flow::Normal;
      }
      case Node::Kind::SetBlock: {
        std::string captured;
        exec(n.body, scope, captured, 0);
        Value v(captured);
        for (const auto& f : n.filters) v = apply_filter(*f, v, scope);
        scope->vars[n.targets[0]] = v;
        return Flow::Normal;
      }
      case Node::Kind::Macro:
        scope->vars[n.name] = make_macro(n, scope);
        return Flow::Normal;
      case Node::Kind::CallBlock: {
        // The macro receives the block as its `caller` argument (its scope is the defining one).
        Value fn = eval(*n.expr->a, scope);
        CallArgs args = eval_args(*n.expr, scope);
        args.keyword.emplace_back("caller", make_macro(n, scope, "caller"));
        if (!fn.is_function()) runtime_error(n.line, "call block target is not callable");
        append(out, call(fn, args, n.line).to_str(), n.line);
        return Flow::Normal;
      }
      case Node::Kind::FilterBlock: {
        std::string captured;
        Flow f = exec(n.body, scope, captured, loop_depth);
        Value v(captured);
        for (const auto& flt : n.filters) v = apply_filter(*flt, v, scope);
        append(out, v.to_str(), n.line);
        return f;
      }
      case Node::Kind::Generation: return exec(n.body, scope, out, loop_depth);
      case Node::Kind::With: {
        auto inner = std::make_shared<Scope>();
        inner->parent = scope;
        for (size_t i = 0; i < n.targets.size(); ++i) inner->vars[n.targets[i]] = eval(*n.values[i], scope);
        return exec(n.body, inner, out, loop_depth);
      }
      case Node::Kind::Break:
      case Node::Kind::Continue:
        if (loop_depth == 0) runtime_error(n.line, std::string("'") + (n.kind == Node::Kind::Break ? "break" : "continue") + "' outside of a loop");
        return n.kind == Node::Kind::Break ? Flow::Break : Flow::Continue;
    }
    return Flow::Normal;
  }

  void assign(const std::vector<std::string>& targets, const Value& v, Scope& scope, int line) {
    if (targets.size() == 1) {
      scope.vars[targets[0]] = v;
      return;
    }
    List items = iterate(v, line);
    if (items.size() != targets.size())
      runtime_error(line, "cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(targets.size()) + " names");
    for (size_t i = 0; i < targets.size(); ++i) scope.vars[targets[i]] = items[i];
  }

  // The elements a Python for loop would visit, with the template line in errors.
  List iterate(const Value& v, int line) {
    try {
      return iterable_items(v);
    } catch (const Error& err) {
      runtime_error(line, err.what());
    }
  }

  void exec_for(const Node& n, const ScopePtr& scope, std::string& out) {
    List items = iterate(eval(*n.expr, scope), n.line);
    if (n.cond) {  // `for x in xs if cond`: filter first, so loop.length counts the kept items
      List kept;
      for (const auto& item : items) {
        auto s = std::make_shared<Scope>();
        s->parent = scope;
        assign(n.targets, item, *s, n.line);
        if (eval(*n.cond, s).truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      exec(n.else_body, scope, out, 0);
      return;
    }
    const int64_t len = static_cast<int64_t>(items.size());
    // Keys and loop.cycle are made once per loop, not per iteration: loops are the hot path.
    static const Value kKeys[] = {Value("index"), Value("index0"), Value("revindex"), Value("revindex0"),
                                  Value("first"), Value("last"), Value("length"), Value("depth"),
                                  Value("depth0"), Value("previtem"), Value("nextitem"), Value("cycle")};
    auto current = std::make_shared<int64_t>(0);
    Value cycle = Value::function("loop.cycle", [current](CallArgs& a) {
      GLM_CHECK(!a.positional.empty(), "jinja: no items for cycling given");
      return a.positional[static_cast<size_t>(*current) % a.positional.size()];
    });
    for (int64_t i = 0; i < len; ++i) {
      step(n.line);  // empty bodies must count too, or nested loops could run unbounded
      *current = i;
      auto s = std::make_shared<Scope>();
      s->parent = scope;
      Dict loop;
      loop.reserve(12);
      loop.emplace_back(kKeys[0], Value(i + 1));
      loop.emplace_back(kKeys[1], Value(i));
      loop.emplace_back(kKeys[2], Value(len - i));
      loop.emplace_back(kKeys[3], Value(len - i - 1));
      loop.emplace_back(kKeys[4], Value(i == 0));
      loop.emplace_back(kKeys[5], Value(i == len - 1));
      loop.emplace_back(kKeys[6], Value(len));
      loop.emplace_back(kKeys[7], Value(1));
      loop.emplace_back(kKeys[8], Value(0));
      loop.emplace_back(kKeys[9], i > 0 ? items[i - 1] : Value::undefined("there is no previous item"));
      loop.emplace_back(kKeys[10], i + 1 < len ? items[i + 1] : Value::undefined("there is no next item"));
      loop.emplace_back(kKeys[11], cycle);
      s->vars["loop"] = Value::dict(std::move(loop));
      assign(n.targets, items[i], *s, n.line);
      if (exec(n.body, s, out, 1) == Flow::Break) break;
    }
  }

  Value make_macro(const Node& n, const ScopePtr& scope, const std::string& name = {}) {
    std::weak_ptr<Scope> defining = scope;
    ScopePtr globals = globals_;
    std::string macro_name = name.empty() ? n.name : name;
    const Node* node = &n;
    return Value::function(macro_name, [this, node, defining, globals, macro_name](CallArgs& args) -> Value {
      if (++call_depth_ > kMaxCallDepth) {
        call_depth_ = 0;
        runtime_error(node->line, "maximum recursion depth exceeded in macro '" + macro_name + "'");
      }
      auto s = std::make_shared<Scope>();
      ScopePtr parent = defining.lock();
      s->parent = parent ? parent : globals;
      List varargs;
      for (size_t i = 0; i < args.positional.size(); ++i) {
        if (i < node->params.size()) s->vars[node->params[i]] = args.positional[i];
        else varargs.push_back(args.positional[i]);
      }
      Dict kwargs;
      for (const auto& [k, v] : args.keyword) {
        bool is_param = false;
        for (const auto& p : node->params) is_param |= p == k;
        if (is_param) s->vars[k] = v;
        else if (k == "caller") s->vars[k] = v;
        else kwargs.emplace_back(Value(k), v);
      }
      for (size_t i = 0; i < node->params.size(); ++i) {
        if (s->vars.count(node->params[i])) continue;
        s->vars[node->params[i]] = node->defaults[i] ? eval(*node->defaults[i], s)
                                                     : Value::undefined("parameter '" + node->params[i] + "' was not provided");
      }
      s->vars["varargs"] = Value::list(std::move(varargs), /*tuple=*/true);
      s->vars["kwargs"] = Value::dict(std::move(kwargs));
      std::string out;
      exec(node->body, s, out, 0);
      --call_depth_;
      return Value(out);
    });
  }

 public:
  Value eval(const Expr& e, const ScopePtr& scope) {
    step(e.line);
    switch (e.kind) {
      case Expr::Kind::Literal: return e.value;
      case Expr::Kind::Name: {
        const Value* v = scope->lookup(e.name);
        return v ? *v : Value::undefined("'" + e.name + "' is undefined");
      }
      case Expr::Kind::GetAttr: {
        Value obj = eval(*e.a, scope);
        if (obj.is_undefined()) runtime_error(e.line, obj.undefined_hint());
        return get_attr(obj, e.name);
      }
      case Expr::Kind::GetItem: {
        Value obj = eval(*e.a, scope);
        Value key = eval(*e.b, scope);
        if (obj.is_undefined()) runtime_error(e.line, obj.undefined_hint());
        return get_item(obj, key);
      }
      case Expr::Kind::Slice: {
        Value obj = eval(*e.a, scope);
        if (obj.is_undefined()) runtime_error(e.line, obj.undefined_hint());
        Value start = e.b ? eval(*e.b, scope) : Value::none();
        Value stop = e.c ? eval(*e.c, scope) : Value::none();
        Value stride = e.d ? eval(*e.d, scope) : Value::none();
        try {
          return slice(obj, start, stop, stride);
        } catch (const Error& err) {
          runtime_error(e.line, err.what());
        }
      }
      case Expr::Kind::Call: {
        Value fn = eval(*e.a, scope);
        CallArgs args = eval_args(e, scope);
        if (!fn.is_function()) {
          if (fn.is_undefined()) runtime_error(e.line, fn.undefined_hint());
          runtime_error(e.line, "'" + fn.type_name() + "' object is not callable");
        }
        return call(fn, args, e.line);
      }
      case Expr::Kind::Filter: return apply_filter(e, eval(*e.a, scope), scope);
      case Expr::Kind::Test: {
        Value v = eval(*e.a, scope);
        CallArgs args = eval_args(e, scope);
        bool r;
        try {
          r = apply_test(e.name, v, args);
        } catch (const Error& err) {
          runtime_error(e.line, err.what());
        }
        return Value(e.negated ? !r : r);
      }
      case Expr::Kind::Unary: {
        Value v = eval(*e.a, scope);
        if (e.name == "not") return Value(!v.truthy());
        if (!v.is_number()) runtime_error(e.line, "bad operand type for unary " + e.name + ": '" + v.type_name() + "'");
        if (e.name == "+") return v.is_bool() ? Value(v.as_int()) : v;
        if (v.is_float()) return Value(-v.as_number());
        return Value(-v.as_int());
      }
      case Expr::Kind::Binary: {
        Value l = eval(*e.a, scope);
        Value r = eval(*e.b, scope);
        try {
          return binary_op(e.name, l, r);
        } catch (const Error& err) {
          runtime_error(e.line, err.what());
        }
      }
      case Expr::Kind::And: {
        Value l = eval(*e.a, scope);
        return l.truthy() ? eval(*e.b, scope) : l;
      }
      case Expr::Kind::Or: {
        Value l = eval(*e.a, scope);
        return l.truthy() ? l : eval(*e.b, scope);
      }
      case Expr::Kind::Compare: {
        Value left = eval(*e.a, scope);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i], scope);
          bool r;
          try {
            r = compare_op(e.ops[i], left, right);
          } catch (const Error& err) {
            runtime_error(e.line, err.what());
          }
          if (!r) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Expr::Kind::Cond:
        if (eval(*e.b, scope).truthy()) return eval(*e.a, scope);
        return e.c ? eval(*e.c, scope) : Value::undefined("the inline if-expression evaluated to false and no else section was defined");
      case Expr::Kind::List:
      case Expr::Kind::Tuple: {
        List items;
        for (const auto& a : e.args) items.push_back(eval(*a, scope));
        return Value::list(std::move(items), e.kind == Expr::Kind::Tuple);
      }
      case Expr::Kind::Dict: {
        Dict d;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value k = eval(*e.args[i], scope);
          Value v = eval(*e.args[i + 1], scope);
          if (k.is_list() && !k.is_tuple()) runtime_error(e.line, "unhashable type: 'list'");
          if (k.is_dict()) runtime_error(e.line, "unhashable type: 'dict'");
          bool replaced = false;
          for (auto& [dk, dv] : d)
            if (equals(dk, k)) { dv = v; replaced = true; break; }
          if (!replaced) d.emplace_back(k, v);
        }
        return Value::dict(std::move(d));
      }
    }
    runtime_error(e.line, "unknown expression");
  }

 private:
  CallArgs eval_args(const Expr& e, const ScopePtr& scope) {
    CallArgs args;
    for (const auto& a : e.args) args.positional.push_back(eval(*a, scope));
    for (const auto& [k, v] : e.kwargs) args.keyword.emplace_back(k, eval(*v, scope));
    return args;
  }

  Value call(const Value& fn, CallArgs& args, int line) {
    try {
      return fn.fn()(args);
    } catch (const Error& err) {
      std::string msg = err.what();
      if (msg.rfind("jinja: ", 0) == 0) throw;  // already located
      runtime_error(line, msg);
    }
  }

  Value apply_filter(const Expr& f, const Value& input, const ScopePtr& scope) {
    CallArgs args = eval_args(f, scope);
    FilterCaller caller{[](const std::string& name, const Value& v, CallArgs& a) { return builtin_filter(name, v, a); },
                        [](const std::string& name, const Value& v, CallArgs& a) { return apply_test(name, v, a); }};
    try {
      if (f.name == "map" || f.name == "select" || f.name == "reject" || f.name == "selectattr" || f.name == "rejectattr")
        return higher_order_filter(f.name, input, args, caller);
      return builtin_filter(f.name, input, args);
    } catch (const Error& err) {
      std::string msg = err.what();
      if (msg.rfind("jinja: ", 0) == 0) throw;
      runtime_error(f.line, msg);
    }
  }

  ScopePtr globals_;
  long long steps_ = 0;
  int call_depth_ = 0;
};

ScopePtr make_globals(const nlohmann::ordered_json& context) {
  auto g = std::make_shared<Scope>();
  g->vars["range"] = Value::function("range", builtin_range);
  g->vars["dict"] = Value::function("dict", [](CallArgs& a) {
    Dict d;
    if (!a.positional.empty()) {
      const Value& src = a.positional[0];
      if (src.is_dict()) d = src.entries();
      else fail("dict() positional argument must be a mapping");
    }
    for (const auto& [k, v] : a.keyword) d.emplace_back(Value(k), v);
    return Value::dict(std::move(d));
  });
  g->vars["namespace"] = Value::function("namespace", [](CallArgs& a) {
    Dict d;
    if (!a.positional.empty() && a.positional[0].is_dict()) d = a.positional[0].entries();
    for (const auto& [k, v] : a.keyword) {
      GLM_CHECK(k.empty() || k[0] != '_', "chat templates cannot store underscore-prefixed attributes on a namespace, but got '", k, "'");
      d.emplace_back(Value(k), v);
    }
    return Value::ns(std::move(d));
  });
  g->vars["raise_exception"] = Value::function("raise_exception", [](CallArgs& a) -> Value {
    fail("jinja: template raised an exception: ", a.get(0, "message").to_str());
  });
  g->vars["strftime_now"] = Value::function("strftime_now", [](CallArgs& a) {
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[512];
    std::string fmt = a.get(0, "format").to_str();
    size_t n = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
    return Value(std::string(buf, n));
  });
  auto ctx = std::make_shared<Scope>();
  ctx->parent = g;
  if (context.is_object())
    for (auto it = context.begin(); it != context.end(); ++it) ctx->vars[it.key()] = Value::from_json(it.value());
  else
    GLM_CHECK(context.is_null(), "jinja: render context must be a JSON object");
  return ctx;
}

}  // namespace

struct Template::Impl {
  Body body;
};

Template::Template(std::string source) : impl_(std::make_unique<Impl>()) { impl_->body = parse(source); }
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const nlohmann::ordered_json& context) const {
  ScopePtr scope = make_globals(context);
  Interpreter interp(scope->parent);
  std::string out;
  interp.exec(impl_->body, scope, out, 0);
  return out;
}

}  // namespace glm::jinja
