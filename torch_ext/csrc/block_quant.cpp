#include "block_quant.h"

#include <cmath>
#include <string>

#include "common.h"

namespace fakequant {
namespace ext {

BlockQuantCall prepare_fake_quant_block(const at::Tensor& input, c10::string_view format, c10::string_view scale_rule,
                                        int64_t block_rows, int64_t block_cols, int64_t quant_min, int64_t quant_max,
                                        std::optional<double> eps, std::optional<double> amax_lower,
                                        std::optional<double> amax_upper, bool tensor_scale,
                                        c10::string_view rounding, const std::optional<at::Tensor>& seed) {
  constexpr const char* op = "fakequant.fake_quant_block";
  BlockQuantArgs a;
  a.dtype = to_dtype(input, op, "input");
  TORCH_CHECK(input.dim() >= 1, op, ": input must have at least 1 dimension (blocks run along the last), got a 0-d "
              "tensor");
  TORCH_CHECK(parse_block_format(std::string(format), &a.format), op, ": format must be one of ",
              kAcceptedBlockFormats, ", got '", std::string(format), "'");
  TORCH_CHECK(parse_block_scale_rule(std::string(scale_rule), &a.rule), op, ": scale_rule must be one of ",
              kAcceptedBlockScaleRules, ", got '", std::string(scale_rule), "'");
  TORCH_CHECK(parse_rounding(std::string(rounding), &a.rounding), op, ": rounding must be one of ",
              kAcceptedRoundings, ", got '", std::string(rounding), "'");

  // The arguments only some rules read: passing one to another rule is an error, not ignored.
  const bool int_rule = block_rule_is_int(a.rule);
  const bool nvfp4 = a.rule == BlockScaleRule::kNvfp4Torchao || a.rule == BlockScaleRule::kNvfp4ModelOpt;
  TORCH_CHECK(int_rule || (quant_min == -128 && quant_max == 127), op, ": quant_min and quant_max are only read "
              "by the int rules; leave them at -128 and 127 with scale_rule '", std::string(scale_rule), "'");
  TORCH_CHECK(int_rule || !eps.has_value(), op, ": eps is only read by the int rules; pass eps=None with "
              "scale_rule '", std::string(scale_rule), "'");
  TORCH_CHECK(a.rule == BlockScaleRule::kFp8Torchao || (!amax_lower.has_value() && !amax_upper.has_value()), op,
              ": amax_lower and amax_upper are only read by scale_rule 'fp8_torchao'; pass None with scale_rule '",
              std::string(scale_rule), "'");
  TORCH_CHECK(nvfp4 || !tensor_scale, op, ": tensor_scale is only read by the nvfp4 rules; pass False with "
              "scale_rule '", std::string(scale_rule), "'");
  if (int_rule) {
    // Checked as int64 before narrowing to the kernel's int32.
    const std::string range_error = check_quant_range(quant_min, quant_max);
    TORCH_CHECK(range_error.empty(), op, ": ", range_error);
    a.quant_min = static_cast<int32_t>(quant_min);
    a.quant_max = static_cast<int32_t>(quant_max);
  }
  if (eps.has_value()) {
    const std::string eps_error = check_eps_value(*eps);
    TORCH_CHECK(eps_error.empty(), op, ": ", eps_error);
    a.eps = static_cast<float>(*eps);
  }
  if (amax_lower.has_value()) a.amax_lower = static_cast<float>(*amax_lower);
  if (amax_upper.has_value()) a.amax_upper = static_cast<float>(*amax_upper);
  a.tensor_scale = tensor_scale;
  a.block_rows = block_rows;
  a.block_cols = block_cols;
  a.cols = input.size(-1);
  a.rows = 1;
  for (int64_t d = 0; d + 1 < input.dim(); ++d) a.rows *= input.size(d);

  BlockQuantCall call;
  call.seed = check_seed(op, input, a.rounding, seed);
  a.seed = call.seed.defined() ? call.seed.const_data_ptr<int64_t>() : nullptr;

  // Allocated before the kernel layer's checks (geometry, format and rule, range, rounding),
  // which also want the buffers; a block size below 1 gives an empty grid here.
  call.input = contiguous_aligned(input);
  const at::TensorOptions options = call.input.options();
  const int64_t grid_rows = block_grid_rows(a);
  const int64_t grid_cols = block_grid_cols(a);
  call.output = at::empty(call.input.sizes(), options);
  call.mask = at::empty({mask_bytes(call.input.numel())}, options.dtype(at::kByte));
  call.scale = at::empty({grid_rows, grid_cols}, options.dtype(at::kFloat));
  call.zero_point = block_rule_uses_min_max(a.rule) ? at::empty({grid_rows, grid_cols}, options.dtype(at::kInt))
                                                    : at::empty({0}, options.dtype(at::kInt));
  if (block_quant_needs_tensor_amax(a)) {
    // Over no elements the abs-max is 0, as the abs_max op gives (the kernels write nothing).
    call.tensor_amax = call.input.numel() > 0 ? at::empty({}, options.dtype(at::kFloat))
                                              : at::zeros({}, options.dtype(at::kFloat));
    a.tensor_amax = call.tensor_amax.mutable_data_ptr<float>();
  } else {
    call.tensor_amax = at::empty({0}, options.dtype(at::kFloat));
  }
  a.input = call.input.const_data_ptr();
  a.output = call.output.mutable_data_ptr();
  a.mask = call.mask.mutable_data_ptr<uint8_t>();
  a.scale = call.scale.mutable_data_ptr<float>();
  a.zero_point = block_rule_uses_min_max(a.rule) ? call.zero_point.mutable_data_ptr<int32_t>() : nullptr;
  const std::string error = check_block_quant_args(a);
  TORCH_CHECK(error.empty(), op, ": ", error);
  call.args = a;
  return call;
}

}  // namespace ext
}  // namespace fakequant
