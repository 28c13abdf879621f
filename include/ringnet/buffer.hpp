// Byte views for I/O: rn::buffer(x) turns strings, arrays and vectors of bytes into spans.
#pragma once

#include <ringnet/config.hpp>

#include <cstddef>
#include <ranges>
#include <span>
#include <type_traits>

RINGNET_BEGIN_NAMESPACE

using mutable_buffer = std::span<std::byte>;
using const_buffer = std::span<const std::byte>;

template <class R>
concept byte_range = std::ranges::contiguous_range<R> && std::ranges::sized_range<R> &&
                     sizeof(std::ranges::range_value_t<R>) == 1 &&
                     std::is_trivially_copyable_v<std::ranges::range_value_t<R>>;

/// A byte span over any contiguous range of 1-byte elements; writable when the range is.
template <byte_range R>
[[nodiscard]] auto buffer(R&& r) noexcept {
  auto* p = std::ranges::data(r);
  const auto n = std::ranges::size(r);
  if constexpr (std::is_const_v<std::remove_pointer_t<decltype(p)>>)
    return const_buffer(reinterpret_cast<const std::byte*>(p), n);
  else
    return mutable_buffer(reinterpret_cast<std::byte*>(p), n);
}
[[nodiscard]] inline mutable_buffer buffer(void* p, std::size_t n) noexcept {
  return {static_cast<std::byte*>(p), n};
}
[[nodiscard]] inline const_buffer buffer(const void* p, std::size_t n) noexcept {
  return {static_cast<const std::byte*>(p), n};
}

RINGNET_END_NAMESPACE
