// compact_columns: per row b, the kept positions of the sequence dimension move, in order, to its
// right end and the freed left positions are zeroed, in place, in every tensor. Only bytes move.
#include <cstring>
#include <vector>

#include "strided_layout.h"
#include "ops.h"

namespace specalign {
namespace {

constexpr int64_t kParallelBytes = 256 << 10;  // below this, threads cost more than they save

std::vector<int64_t> dims_between(int64_t begin, int64_t end) {
  std::vector<int64_t> dims;
  for (int64_t d = begin; d < end; ++d) dims.push_back(d);
  return dims;
}

// Consecutive kept positions [source, source + length) that move together to [target, target + length).
struct Run {
  int64_t source, target, length;
};

// A tensor as [B, outer cells, S positions, inner runs], in bytes.
struct ColumnLayout {
  int64_t row_stride, position_stride;
  Cells outer;
  ByteRuns inner;
  bool contiguous_positions;  // a span of positions is one block of memory

  ColumnLayout(const at::Tensor& t, int64_t dim)
      : row_stride(t.stride(0) * t.element_size()), position_stride(t.stride(dim) * t.element_size()),
        outer(t, dims_between(1, dim)), inner(t, dims_between(dim + 1, t.dim())),
        contiguous_positions(inner.cells.dims.empty() && position_stride == inner.run_bytes) {}

  // Positions [source, source + count) of a slab move to [target, target + count), target >= source.
  void move(char* slab, int64_t source, int64_t target, int64_t count) const {
    if (contiguous_positions) {
      std::memmove(slab + target * position_stride, slab + source * position_stride, count * position_stride);
      return;
    }
    for (int64_t k = count - 1; k >= 0; --k) {  // highest first: no source is overwritten unread
      CellWalker cell(inner.cells, 0);
      for (int64_t c = inner.cells.count(); c > 0; --c, cell.next()) {
        copy_bytes(slab + (target + k) * position_stride + cell.offset(),
                   slab + (source + k) * position_stride + cell.offset(), inner.run_bytes);
      }
    }
  }

  void zero(char* slab, int64_t count) const {
    if (contiguous_positions) {
      std::memset(slab, 0, count * position_stride);
      return;
    }
    for (int64_t k = 0; k < count; ++k) {
      CellWalker cell(inner.cells, 0);
      for (int64_t c = inner.cells.count(); c > 0; --c, cell.next()) {
        std::memset(slab + k * position_stride + cell.offset(), 0, inner.run_bytes);
      }
    }
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> compact_columns_cpu(at::TensorList tensors, const at::Tensor& keep_mask,
                                                      at::IntArrayRef dims) {
  TORCH_CHECK(static_cast<int64_t>(tensors.size()) == static_cast<int64_t>(dims.size()),
              "compact_columns: one dim per tensor");
  TORCH_CHECK(keep_mask.dim() == 2 && keep_mask.scalar_type() == at::kBool, "compact_columns: keep_mask must be bool [B, S]");
  const at::Tensor mask = keep_mask.contiguous();
  const int64_t batch = mask.size(0), length = mask.size(1);
  const bool* keep = mask.const_data_ptr<bool>();
  at::Tensor lengths = at::empty({batch}, mask.options().dtype(at::kLong));
  at::Tensor attention_mask = at::empty({batch, length}, mask.options().dtype(at::kLong));
  int64_t* kept = lengths.data_ptr<int64_t>();
  int64_t* attend = attention_mask.data_ptr<int64_t>();

  // Each row's moves, right to left; positions already in place (a kept suffix) are left out.
  std::vector<Run> runs;
  std::vector<int64_t> first_run(batch + 1);
  for (int64_t b = 0; b < batch; ++b) {
    first_run[b] = static_cast<int64_t>(runs.size());
    int64_t target = length;
    for (int64_t s = length - 1; s >= 0; --s) {
      if (!keep[b * length + s] || --target == s) continue;
      const bool extends = static_cast<int64_t>(runs.size()) > first_run[b] && runs.back().source == s + 1 &&
                           runs.back().target == target + 1;
      if (extends) {
        runs.back() = {s, target, runs.back().length + 1};
      } else {
        runs.push_back({s, target, 1});
      }
    }
    kept[b] = length - target;
    for (int64_t s = 0; s < length; ++s) attend[b * length + s] = s >= target;
  }
  first_run[batch] = static_cast<int64_t>(runs.size());

  std::vector<ColumnLayout> layouts;
  int64_t bytes = 0;
  for (int64_t t = 0; t < static_cast<int64_t>(tensors.size()); ++t) {
    const at::Tensor& tensor = tensors[t];
    TORCH_CHECK(1 <= dims[t] && dims[t] < tensor.dim() && tensor.size(0) == batch && tensor.size(dims[t]) == length,
                "compact_columns: tensors[", t, "] does not match keep_mask along dims 0 and ", dims[t]);
    layouts.emplace_back(tensor, dims[t]);
    bytes += tensor.numel() * tensor.element_size();
  }

  // One work item per (tensor, row).
  const auto num_tensors = static_cast<int64_t>(tensors.size());
  auto compact = [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / batch, b = item % batch;
      if (tensors[t].numel() == 0) continue;
      const ColumnLayout& layout = layouts[t];
      char* row = static_cast<char*>(tensors[t].data_ptr()) + b * layout.row_stride;
      CellWalker outer(layout.outer, 0);
      for (int64_t c = layout.outer.count(); c > 0; --c, outer.next()) {
        char* slab = row + outer.offset();
        for (int64_t r = first_run[b]; r < first_run[b + 1]; ++r) {
          layout.move(slab, runs[r].source, runs[r].target, runs[r].length);
        }
        layout.zero(slab, length - kept[b]);
      }
    }
  };
  if (bytes < kParallelBytes) {
    compact(0, num_tensors * batch);
  } else {
    at::parallel_for(0, num_tensors * batch, 1, compact);
  }
  return {lengths, attention_mask};
}

}  // namespace specalign
