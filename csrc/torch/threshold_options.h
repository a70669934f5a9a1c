// Thresholding options shared by diffaccel::threshold and diffaccel::ei_step.
#pragma once

#include <string_view>
#include <vector>

#include "common.h"

namespace diffaccel {

enum class ThresholdKind { kClip, kDynamic };

struct ThresholdOptions {
  ThresholdKind kind;
  double ratio;
  double max_value;
  ThresholdStyle style;
};

inline ThresholdOptions parse_threshold(const char* op, std::string_view kind, double ratio, double max_value,
                                        std::string_view style) {
  TORCH_CHECK_VALUE(kind == "clip" || kind == "dynamic", op,
                    ": argument 'kind' must be \"clip\" or \"dynamic\", got \"", kind, "\"");
  TORCH_CHECK_VALUE(ratio >= 0.0 && ratio <= 1.0, op, ": argument 'ratio' must be in [0, 1], got ", ratio);
  TORCH_CHECK_VALUE(max_value >= 0.0, op, ": argument 'max_value' must be >= 0, got ", max_value);
  TORCH_CHECK_VALUE(style == "diffusers" || style == "dpm-solver", op,
                    ": argument 'style' must be \"diffusers\" or \"dpm-solver\", got \"", style, "\"");
  return {kind == "clip" ? ThresholdKind::kClip : ThresholdKind::kDynamic, ratio, max_value,
          style == "diffusers" ? ThresholdStyle::kDiffusers : ThresholdStyle::kDpmSolver};
}

// The per-sample (limit, divisor) of threshold_element in the compute type:
// for clip one shared pair (max_value, 1); for dynamic one scale s per sample,
// used as both, filled by the caller's selection pass into scales().
template <typename acc_t>
struct ThresholdTable {
  std::vector<acc_t> values;
  bool dynamic;
  ThresholdTable(const ThresholdOptions& t, int64_t batch) : dynamic(t.kind == ThresholdKind::kDynamic) {
    if (dynamic) values.resize(batch);
    else values = {acc_t(t.max_value), acc_t(1)};
  }
  acc_t* scales() { return values.data(); }
  const acc_t* limit() const { return values.data(); }
  const acc_t* divisor() const { return dynamic ? values.data() : values.data() + 1; }
  int64_t stride() const { return dynamic ? 1 : 0; }
};

}  // namespace diffaccel
