#pragma once
// Compile-time dispatch over the GQA group sizes the decode-shaped kernels are built for (1, 2 and
// 4-8 query heads per KV head; 3 is not built): fn receives the size as std::integral_constant, so
// a template can take it as a parameter. A size that is not built returns `otherwise`.

#include <type_traits>

namespace retro::attention::cuda::impl {

template <typename R, typename Fn>
R with_group_size(int group, R otherwise, Fn&& fn) {
  switch (group) {
    case 1: return fn(std::integral_constant<int, 1>{});
    case 2: return fn(std::integral_constant<int, 2>{});
    case 4: return fn(std::integral_constant<int, 4>{});
    case 5: return fn(std::integral_constant<int, 5>{});
    case 6: return fn(std::integral_constant<int, 6>{});
    case 7: return fn(std::integral_constant<int, 7>{});
    case 8: return fn(std::integral_constant<int, 8>{});
    default: return otherwise;
  }
}

}  // namespace retro::attention::cuda::impl
