// compact_rows: rows keep[0..n) of every tensor move to rows 0..n, in place. Only bytes move, so
// one call covers mixed dtypes; any strides work, and contiguous rows move with memcpy.
#include <vector>

#include "strided_layout.h"
#include "ops.h"

namespace specalign {
namespace {

constexpr int64_t kItemBytes = 64 << 10;        // bytes of each row one work item moves
constexpr int64_t kParallelBytes = 256 << 10;   // below this, threads cost more than they save

// A slice of one tensor's row cells that a single thread moves for every kept row.
struct WorkItem {
  int64_t tensor, first_cell, num_cells, run_offset, run_bytes;
};

}  // namespace

void compact_rows_cpu(at::TensorList tensors, const at::Tensor& keep, at::IntArrayRef dims) {
  TORCH_CHECK(static_cast<int64_t>(tensors.size()) == static_cast<int64_t>(dims.size()),
              "compact_rows: one dim per tensor");
  TORCH_CHECK(keep.dim() == 1 && keep.scalar_type() == at::kLong, "compact_rows: keep must be int64 [n]");
  const at::Tensor keep_c = keep.contiguous();
  const int64_t* source = keep_c.const_data_ptr<int64_t>();
  const int64_t kept = keep_c.numel();
  // Rows before the first one that moves are already in place; after it, every keep[i] > i.
  int64_t first_moved = 0;
  while (first_moved < kept && source[first_moved] == first_moved) ++first_moved;
  if (first_moved == kept) return;

  std::vector<ByteRuns> layouts;
  std::vector<WorkItem> items;
  for (int64_t t = 0; t < static_cast<int64_t>(tensors.size()); ++t) {
    const at::Tensor& tensor = tensors[t];
    TORCH_CHECK(0 <= dims[t] && dims[t] < tensor.dim() && tensor.size(dims[t]) >= kept,
                "compact_rows: bad dim or batch size for tensors[", t, "]");
    std::vector<int64_t> row_dims;
    for (int64_t d = 0; d < tensor.dim(); ++d) {
      if (d != dims[t]) row_dims.push_back(d);
    }
    layouts.emplace_back(tensor, row_dims);
    if (tensor.numel() == 0) continue;
    const ByteRuns& layout = layouts.back();
    const int64_t num_cells = layout.cells.count();
    if (layout.run_bytes >= kItemBytes) {  // long runs: each item a piece of one cell's run
      for (int64_t cell = 0; cell < num_cells; ++cell) {
        for (int64_t offset = 0; offset < layout.run_bytes; offset += kItemBytes) {
          items.push_back({t, cell, 1, offset, std::min(kItemBytes, layout.run_bytes - offset)});
        }
      }
    } else {  // short runs: each item a group of whole cells
      const int64_t cells_per_item = kItemBytes / layout.run_bytes;
      for (int64_t cell = 0; cell < num_cells; cell += cells_per_item) {
        items.push_back({t, cell, std::min(cells_per_item, num_cells - cell), 0, layout.run_bytes});
      }
    }
  }

  auto move = [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const WorkItem& item = items[k];
      const at::Tensor& tensor = tensors[item.tensor];
      char* base = static_cast<char*>(tensor.data_ptr()) + item.run_offset;
      const int64_t row_stride = tensor.stride(dims[item.tensor]) * tensor.element_size();
      CellWalker cell(layouts[item.tensor].cells, item.first_cell);
      for (int64_t c = 0; c < item.num_cells; ++c, cell.next()) {
        char* cell_base = base + cell.offset();
        // Destinations in increasing order: row i reads row keep[i] >= i, which nothing has overwritten.
        for (int64_t i = first_moved; i < kept; ++i) {
          copy_bytes(cell_base + i * row_stride, cell_base + source[i] * row_stride, item.run_bytes);
        }
      }
    }
  };
  int64_t bytes = 0;
  for (const WorkItem& item : items) bytes += item.num_cells * item.run_bytes * (kept - first_moved);
  const auto num_items = static_cast<int64_t>(items.size());
  if (bytes < kParallelBytes) {
    move(0, num_items);
  } else {
    at::parallel_for(0, num_items, 1, move);
  }
}

}  // namespace specalign
