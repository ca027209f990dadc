// The glm4moe command: subcommands logits, generate, info, tokenize.
#include <cstdio>

int main() {
  std::puts("glm4moe: under construction");
  return 0;
}
