// Which clone of the DA_CPU_MULTIVERSION kernels the ifunc resolver picks:
// gcc's resolver takes the highest-priority target the CPU supports, in the
// order avx512f > avx2 > default, which these checks mirror.
#include "kernels.h"

namespace diffaccel::cpu {

const char* cpu_isa_level() {
#ifdef DIFFACCEL_CPU_BASELINE_ONLY
  return "baseline (built with DIFFACCEL_CPU_CLONES=0)";
#else
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2")) return "avx2";
  return "baseline";
#endif
}

}  // namespace diffaccel::cpu
