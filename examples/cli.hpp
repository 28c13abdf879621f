// Small command-line helpers shared by the examples.
#pragma once

#include <ringnet/endpoint.hpp>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

namespace cli {

[[noreturn]] inline void usage_error(const char* usage, const std::string& what) {
  std::fprintf(stderr, "error: %s\nusage: %s\n", what.c_str(), usage);
  std::exit(2);
}

// "--name value" (also "--name=value"); advances i past the value.
inline std::optional<std::string_view> option(int argc, char** argv, int& i, std::string_view name,
                                              const char* usage) {
  const std::string_view arg = argv[i];
  if (arg.substr(0, name.size()) != name) return std::nullopt;
  if (arg.size() == name.size()) {
    if (i + 1 >= argc) usage_error(usage, std::string(name) + " needs a value");
    return std::string_view(argv[++i]);
  }
  if (arg[name.size()] == '=') return arg.substr(name.size() + 1);
  return std::nullopt;
}

inline ringnet::endpoint endpoint(std::string_view text, const char* usage) {
  auto ep = ringnet::endpoint::parse(text);
  if (!ep) usage_error(usage, "bad address '" + std::string(text) + "': " + ep.error().message());
  return *ep;
}

inline double number(std::string_view text, const char* usage, double min, double max) {
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || end != text.data() + text.size() || v < min || v > max)
    usage_error(usage, "bad number '" + std::string(text) + "'");
  return v;
}

}  // namespace cli
