// Endpoint parsing and formatting, including a fuzz-style pass over 100,000 random and mutated
// strings (run under ASan/UBSan in CI).
#include <random>
#include <string>

#include "support.hpp"

TEST_CASE("endpoint: parses and formats IPv4 and IPv6") {
  auto v4 = rn::endpoint::parse("127.0.0.1:8080");
  REQUIRE(v4);
  CHECK(v4->family() == AF_INET);
  CHECK(v4->port() == 8080);
  CHECK(v4->to_string() == "127.0.0.1:8080");

  auto v6 = rn::endpoint::parse("[::1]:443");
  REQUIRE(v6);
  CHECK(v6->is_v6());
  CHECK(v6->port() == 443);
  CHECK(v6->to_string() == "[::1]:443");
  CHECK(*v6 == rn::endpoint::loopback_v6(443));

  CHECK(rn::endpoint::parse("0.0.0.0:0")->port() == 0);
  CHECK(rn::endpoint::parse("[2001:db8::a:b]:65535")->to_string() == "[2001:db8::a:b]:65535");
  CHECK(rn::endpoint::parse("[::ffff:127.0.0.1]:1")->is_v6());
}

TEST_CASE("endpoint: bad input is a clear error, never UB") {
  struct bad {
    const char* text;
    rn::endpoint_errc why;
  };
  const bad cases[] = {
      {"", rn::endpoint_errc::empty},
      {"1.2.3", rn::endpoint_errc::missing_port},
      {"1.2.3:80", rn::endpoint_errc::bad_address},
      {"[::1", rn::endpoint_errc::missing_bracket},
      {"[::1]", rn::endpoint_errc::missing_port},
      {"[::1]80", rn::endpoint_errc::missing_port},
      {"::1:80", rn::endpoint_errc::missing_bracket},
      {":99999", rn::endpoint_errc::bad_port},
      {"127.0.0.1:", rn::endpoint_errc::bad_port},
      {"127.0.0.1:-1", rn::endpoint_errc::bad_port},
      {"127.0.0.1:+80", rn::endpoint_errc::bad_port},
      {"127.0.0.1:65536", rn::endpoint_errc::bad_port},
      {"127.0.0.1:80a", rn::endpoint_errc::bad_port},
      {"localhost:80", rn::endpoint_errc::bad_address},
      {"[127.0.0.1]:80", rn::endpoint_errc::bad_address},
      {"256.0.0.1:80", rn::endpoint_errc::bad_address},
      {":80", rn::endpoint_errc::bad_address},
  };
  for (const auto& c : cases) {
    auto r = rn::endpoint::parse(c.text);
    CAPTURE(c.text);
    REQUIRE_FALSE(r);
    CHECK(r.error() == rn::make_error_code(c.why));
    CHECK(r.error() == std::errc::invalid_argument);  // a generic condition for callers
    CHECK_FALSE(r.error().message().empty());
  }
  const std::string garbage(10 * 1024, 'x');
  CHECK(rn::endpoint::parse(garbage).error() == rn::make_error_code(rn::endpoint_errc::too_long));
  CHECK_THROWS_AS((void)rn::endpoint::parse("nope").value(), std::system_error);
}

TEST_CASE("endpoint: 100,000 random and mutated strings parse or fail cleanly, and round-trip") {
  std::mt19937 rng(20261125);
  const std::string seeds[] = {"127.0.0.1:8080", "[::1]:443", "[fe80::1:2:3:4]:1", "10.0.0.255:0",
                               "[::ffff:1.2.3.4]:65535"};
  const std::string alphabet = "0123456789abcdefABCDEF:.[]%-+ x\xff";
  int parsed = 0;
  for (int i = 0; i < 100'000; ++i) {
    std::string s;
    if (i % 2) {  // mutate a valid endpoint
      s = seeds[rng() % std::size(seeds)];
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits; ++e) {
        const std::size_t pos = s.empty() ? 0 : rng() % s.size();
        switch (rng() % 3) {
          case 0: if (!s.empty()) s.erase(pos, 1); break;
          case 1: s.insert(pos, 1, alphabet[rng() % alphabet.size()]); break;
          default: if (!s.empty()) s[pos] = alphabet[rng() % alphabet.size()]; break;
        }
      }
    } else {  // random bytes of random length, sometimes long
      const std::size_t len = rng() % (i % 100 == 0 ? 4096 : 48);
      for (std::size_t k = 0; k < len; ++k) s.push_back(static_cast<char>(rng()));
    }
    auto r = rn::endpoint::parse(s);
    if (r) {
      ++parsed;
      auto again = rn::endpoint::parse(r->to_string());
      REQUIRE(again);
      CHECK(*again == *r);
    } else {
      CHECK(r.error() == std::errc::invalid_argument);
    }
  }
  MESSAGE(parsed << " of 100000 fuzzed strings were valid endpoints");
  CHECK(parsed > 0);
}
