// Recursive-descent parser for Jinja, following jinja2/parser.py's grammar
// and operator precedence so that expressions group as they do in Python:
//   cond-expr > or > and > not > compare > +,- > ~ > *,/,//,% > ** > unary > postfix/filters/tests
#include <algorithm>

#include "core/error.h"
#include "text/jinja/ast.h"
#include "text/jinja/lexer.h"

namespace glm::jinja {
namespace {

using T = Token::Type;
constexpr int kMaxDepth = 200;  // nesting limit so hostile input cannot overflow the stack

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : toks_(std::move(tokens)) {}

  Body parse_template() {
    Body body = parse_body({});
    if (peek().type != T::End) error("unexpected tag");
    return body;
  }

 private:
  const Token& peek(size_t ahead = 0) const { return toks_[std::min(pos_ + ahead, toks_.size() - 1)]; }
  const Token& next() {
    const Token& t = peek();
    if (pos_ < toks_.size() - 1) ++pos_;
    return t;
  }
  [[noreturn]] void error(const std::string& what) const {
    const Token& t = peek();
    std::string near = t.type == T::End ? "end of template" : t.type == T::BlockEnd ? "'%}'" : t.type == T::VarEnd ? "'}}'" : "'" + t.text + "'";
    fail("jinja: syntax error at line ", t.line, ": ", what, " (near ", near, ")");
  }
  bool is_op(const char* op, size_t ahead = 0) const { return peek(ahead).type == T::Op && peek(ahead).text == op; }
  bool is_name(const char* n, size_t ahead = 0) const { return peek(ahead).type == T::Name && peek(ahead).text == n; }
  void expect_op(const char* op) {
    if (!is_op(op)) error(std::string("expected '") + op + "'");
    next();
  }
  std::string expect_name() {
    if (peek().type != T::Name) error("expected a name");
    return next().text;
  }
  void expect_block_end() {
    if (peek().type != T::BlockEnd) error("expected end of statement block");
    next();
  }

  struct DepthGuard {
    int& d;
    DepthGuard(int& depth, const Parser& p) : d(depth) {
      if (++d > kMaxDepth) p.error("template nested too deeply");
    }
    ~DepthGuard() { --d; }
  };

  // Parses nodes until a block tag whose name is in `ends` (left unconsumed, positioned at its name).
  Body parse_body(const std::vector<std::string>& ends) {
    DepthGuard g(depth_, *this);
    Body body;
    while (true) {
      const Token& t = peek();
      if (t.type == T::End) {
        if (!ends.empty()) error("unexpected end of template, expected '" + ends[0] + "'");
        return body;
      }
      if (t.type == T::Data) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Text;
        n->line = t.line;
        n->text = t.text;
        body.push_back(std::move(n));
        next();
      } else if (t.type == T::VarBegin) {
        next();
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::Output;
        n->line = t.line;
        n->expr = parse_tuple_or_expr();
        if (peek().type != T::VarEnd) error("expected end of print statement");
        next();
        body.push_back(std::move(n));
      } else if (t.type == T::BlockBegin) {
        if (peek(1).type == T::Name && std::find(ends.begin(), ends.end(), peek(1).text) != ends.end()) {
          next();
          return body;
        }
        next();
        body.push_back(parse_statement());
      } else {
        error("unexpected token");
      }
    }
  }

  NodePtr parse_statement() {
    const Token& t = peek();
    if (t.type != T::Name) error("expected a statement name");
    std::string kw = t.text;
    auto n = std::make_unique<Node>();
    n->line = t.line;
    next();
    if (kw == "if") {
      n->kind = Node::Kind::If;
      ExprPtr cond = parse_tuple_or_expr();
      expect_block_end();
      while (true) {
        Body b = parse_body({"elif", "else", "endif"});
        n->branches.emplace_back(std::move(cond), std::move(b));
        std::string which = next().text;
        if (which == "elif") {
          cond = parse_tuple_or_expr();
          expect_block_end();
        } else if (which == "else") {
          expect_block_end();
          n->branches.emplace_back(nullptr, parse_body({"endif"}));
          next();
          expect_block_end();
          break;
        } else {
          expect_block_end();
          break;
        }
      }
    } else if (kw == "for") {
      n->kind = Node::Kind::For;
      n->targets = parse_targets();
      if (!is_name("in")) error("expected 'in'");
      next();
      n->expr = parse_tuple_or_expr(/*no_cond=*/true);
      if (is_name("if")) {
        next();
        n->cond = parse_expr();
      }
      if (is_name("recursive")) error("recursive for loops are not supported");
      expect_block_end();
      n->body = parse_body({"endfor", "else"});
      if (next().text == "else") {
        expect_block_end();
        n->else_body = parse_body({"endfor"});
        next();
      }
      expect_block_end();
    } else if (kw == "set") {
      std::vector<std::string> targets = parse_targets();
      if (targets.size() == 1 && is_op(".")) {
        next();
        n->attr = expect_name();
      }
      n->targets = targets;
      if (is_op("=")) {
        next();
        n->kind = Node::Kind::Set;
        n->expr = parse_tuple_or_expr();
        expect_block_end();
      } else {
        if (targets.size() != 1 || !n->attr.empty()) error("expected '='");
        n->kind = Node::Kind::SetBlock;
        parse_filter_chain(n->filters);
        expect_block_end();
        n->body = parse_body({"endset"});
        next();
        expect_block_end();
      }
    } else if (kw == "macro") {
      n->kind = Node::Kind::Macro;
      n->name = expect_name();
      parse_signature(*n);
      expect_block_end();
      n->body = parse_body({"endmacro"});
      next();
      if (peek().type == T::Name) next();  // {% endmacro name %}
      expect_block_end();
    } else if (kw == "call") {
      n->kind = Node::Kind::CallBlock;
      if (is_op("(")) parse_signature(*n);
      n->expr = parse_expr();
      if (n->expr->kind != Expr::Kind::Call) error("expected a call after 'call'");
      expect_block_end();
      n->body = parse_body({"endcall"});
      next();
      expect_block_end();
    } else if (kw == "filter") {
      n->kind = Node::Kind::FilterBlock;
      parse_filter_chain(n->filters, /*leading_pipe=*/false);
      expect_block_end();
      n->body = parse_body({"endfilter"});
      next();
      expect_block_end();
    } else if (kw == "generation") {
      n->kind = Node::Kind::Generation;
      expect_block_end();
      n->body = parse_body({"endgeneration"});
      next();
      expect_block_end();
    } else if (kw == "with") {
      n->kind = Node::Kind::With;
      while (peek().type != T::BlockEnd) {
        if (!n->targets.empty()) expect_op(",");
        n->targets.push_back(expect_name());
        expect_op("=");
        n->values.push_back(parse_expr());
      }
      expect_block_end();
      n->body = parse_body({"endwith"});
      next();
      expect_block_end();
    } else if (kw == "break" || kw == "continue") {
      n->kind = kw == "break" ? Node::Kind::Break : Node::Kind::Continue;
      expect_block_end();
    } else {
      --pos_;
      error("unknown or unsupported tag '" + kw + "'");
    }
    return n;
  }

  std::vector<std::string> parse_targets() {
    std::vector<std::string> targets;
    bool paren = is_op("(");
    if (paren) next();
    targets.push_back(expect_name());
    while (is_op(",")) {
      next();
      if (peek().type != T::Name) break;
      targets.push_back(expect_name());
    }
    if (paren) expect_op(")");
    return targets;
  }

  void parse_signature(Node& n) {
    expect_op("(");
    while (!is_op(")")) {
      if (!n.params.empty()) expect_op(",");
      if (is_op(")")) break;
      n.params.push_back(expect_name());
      if (is_op("=")) {
        next();
        n.defaults.push_back(parse_expr());
      } else {
        n.defaults.push_back(nullptr);
      }
    }
    next();
  }

  void parse_filter_chain(std::vector<ExprPtr>& out, bool leading_pipe = true) {
    bool first = true;
    while (is_op("|") || (!leading_pipe && first)) {
      if (is_op("|")) next();
      first = false;
      out.push_back(parse_filter(nullptr));
    }
  }

  // ---- expressions ----
  ExprPtr make(Expr::Kind k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }

  // Top level of {{ }} and statements: `a, b` makes a tuple.
  ExprPtr parse_tuple_or_expr(bool no_cond = false) {
    int line = peek().line;
    ExprPtr first = no_cond ? parse_or() : parse_expr();
    if (!is_op(",")) return first;
    auto t = make(Expr::Kind::Tuple, line);
    t->args.push_back(std::move(first));
    while (is_op(",")) {
      next();
      if (peek().type == T::BlockEnd || peek().type == T::VarEnd || is_name("if")) break;
      t->args.push_back(no_cond ? parse_or() : parse_expr());
    }
    return t;
  }

  ExprPtr parse_expr() {
    DepthGuard g(depth_, *this);
    ExprPtr e = parse_or();
    while (is_name("if")) {
      auto c = make(Expr::Kind::Cond, peek().line);
      next();
      c->a = std::move(e);
      c->b = parse_or();
      if (is_name("else")) {
        next();
        c->c = parse_expr();
      }
      e = std::move(c);
    }
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      auto o = make(Expr::Kind::Or, next().line);
      o->a = std::move(e);
      o->b = parse_and();
      e = std::move(o);
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      auto o = make(Expr::Kind::And, next().line);
      o->a = std::move(e);
      o->b = parse_not();
      e = std::move(o);
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      DepthGuard g(depth_, *this);
      auto u = make(Expr::Kind::Unary, next().line);
      u->name = "not";
      u->a = parse_not();
      return u;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    ExprPtr e = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (peek().type == T::Op && (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
                                   peek().text == "<=" || peek().text == ">" || peek().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        next();
        next();
        op = "not in";
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Kind::Compare, e->line);
        cmp->a = std::move(e);
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(e);
  }

  ExprPtr binary(const std::string& op, ExprPtr l, ExprPtr r, int line) {
    auto b = make(Expr::Kind::Binary, line);
    b->name = op;
    b->a = std::move(l);
    b->b = std::move(r);
    return b;
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = next();
      e = binary(t.text, std::move(e), parse_concat(), t.line);
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const Token& t = next();
      e = binary("~", std::move(e), parse_math2(), t.line);
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = next();
      e = binary(t.text, std::move(e), parse_pow(), t.line);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      const Token& t = next();
      e = binary("**", std::move(e), parse_unary(true), t.line);
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard g(depth_, *this);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      auto u = make(Expr::Kind::Unary, peek().line);
      u->name = next().text;
      u->a = parse_unary(false);
      e = std::move(u);
    } else {
      e = parse_postfix(parse_primary());
    }
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = peek();
    switch (t.type) {
      case T::Name: {
        next();
        if (t.text == "true" || t.text == "True") return literal(Value(true), t.line);
        if (t.text == "false" || t.text == "False") return literal(Value(false), t.line);
        if (t.text == "none" || t.text == "None") return literal(Value::none(), t.line);
        auto n = make(Expr::Kind::Name, t.line);
        n->name = t.text;
        return n;
      }
      case T::String: {
        std::string s = next().text;
        while (peek().type == T::String) s += next().text;  // adjacent literals concatenate
        return literal(Value(s), t.line);
      }
      case T::Int: {
        next();
        try {
          return literal(Value(static_cast<int64_t>(std::stoll(t.text))), t.line);
        } catch (const std::exception&) {
          return literal(Value(std::stod(t.text)), t.line);  // beyond int64: approximate
        }
      }
      case T::Float: next(); return literal(Value(std::stod(t.text)), t.line);
      case T::Op:
        if (t.text == "(") {
          next();
          if (is_op(")")) {
            next();
            return make(Expr::Kind::Tuple, t.line);
          }
          ExprPtr first = parse_expr();
          if (is_op(")")) {
            next();
            return first;
          }
          auto tup = make(Expr::Kind::Tuple, t.line);
          tup->args.push_back(std::move(first));
          while (is_op(",")) {
            next();
            if (is_op(")")) break;
            tup->args.push_back(parse_expr());
          }
          expect_op(")");
          return tup;
        }
        if (t.text == "[") {
          next();
          auto l = make(Expr::Kind::List, t.line);
          while (!is_op("]")) {
            if (!l->args.empty()) expect_op(",");
            if (is_op("]")) break;
            l->args.push_back(parse_expr());
          }
          next();
          return l;
        }
        if (t.text == "{") {
          next();
          auto d = make(Expr::Kind::Dict, t.line);
          while (!is_op("}")) {
            if (!d->args.empty()) expect_op(",");
            if (is_op("}")) break;
            d->args.push_back(parse_expr());
            expect_op(":");
            d->args.push_back(parse_expr());
          }
          next();
          return d;
        }
        break;
      default: break;
    }
    error("unexpected token in expression");
  }

  ExprPtr literal(Value v, int line) {
    auto e = make(Expr::Kind::Literal, line);
    e->value = std::move(v);
    return e;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        int line = next().line;
        auto g = make(Expr::Kind::GetAttr, line);
        if (peek().type == T::Name) {
          g->name = next().text;
        } else if (peek().type == T::Int) {
          g->kind = Expr::Kind::GetItem;
          g->b = literal(Value(static_cast<int64_t>(std::stoll(next().text))), line);
        } else {
          error("expected attribute name after '.'");
        }
        g->a = std::move(e);
        e = std::move(g);
      } else if (is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr target) {
    int line = next().line;
    ExprPtr parts[3];
    int colons = 0;
    while (!is_op("]")) {
      if (is_op(":")) {
        next();
        if (++colons > 2) error("too many ':' in subscript");
        continue;
      }
      if (parts[colons]) error("expected ':' or ']'");
      parts[colons] = parse_expr();
    }
    next();
    if (colons == 0) {
      if (!parts[0]) error("expected subscript expression");
      auto g = make(Expr::Kind::GetItem, line);
      g->a = std::move(target);
      g->b = std::move(parts[0]);
      return g;
    }
    auto s = make(Expr::Kind::Slice, line);
    s->a = std::move(target);
    s->b = std::move(parts[0]);
    s->c = std::move(parts[1]);
    s->d = std::move(parts[2]);
    return s;
  }

  void parse_args(Expr& call) {
    expect_op("(");
    while (!is_op(")")) {
      if (!call.args.empty() || !call.kwargs.empty()) expect_op(",");
      if (is_op(")")) break;
      if (is_op("*") || is_op("**")) error("*args and **kwargs in calls are not supported");
      if (peek().type == T::Name && is_op("=", 1)) {
        std::string key = next().text;
        next();
        call.kwargs.emplace_back(key, parse_expr());
      } else {
        if (!call.kwargs.empty()) error("positional argument after keyword argument");
        call.args.push_back(parse_expr());
      }
    }
    next();
  }

  ExprPtr parse_call(ExprPtr target) {
    DepthGuard g(depth_, *this);
    auto c = make(Expr::Kind::Call, peek().line);
    c->a = std::move(target);
    parse_args(*c);
    return c;
  }

  ExprPtr parse_filter(ExprPtr input) {
    auto f = make(Expr::Kind::Filter, peek().line);
    f->name = expect_name();
    while (is_op(".")) {  // dotted filter names
      next();
      f->name += "." + expect_name();
    }
    f->a = std::move(input);
    if (is_op("(")) parse_args(*f);
    return f;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        next();
        e = parse_filter(std::move(e));
      } else if (is_name("is")) {
        auto t = make(Expr::Kind::Test, next().line);
        if (is_name("not")) {
          next();
          t->negated = true;
        }
        t->name = expect_name();
        while (is_op(".")) {
          next();
          t->name += "." + expect_name();
        }
        t->a = std::move(e);
        if (is_op("(")) {
          parse_args(*t);
        } else if ((peek().type == T::Name || peek().type == T::String || peek().type == T::Int ||
                    peek().type == T::Float || is_op("[") || is_op("{") || is_op("(")) &&
                   !is_name("else") && !is_name("or") && !is_name("and") && !is_name("if") && !is_name("in") &&
                   !is_name("not") && !is_name("is")) {
          // `x is divisibleby 3`: one argument without parentheses
          t->args.push_back(parse_postfix(parse_primary()));
        }
        e = std::move(t);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  std::vector<Token> toks_;
  size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace

Body parse(const std::string& source) { return Parser(tokenize(source)).parse_template(); }

}  // namespace glm::jinja
