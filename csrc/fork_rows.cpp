// fork_rows: rows 0..n of every tensor take rows index[0..n) (sorted, repeats allowed), in place.
// Only bytes move, so one call covers mixed dtypes; any strides work, and contiguous rows move
// with memcpy.
//
// Why in place is safe for a sorted index: a destination i with index[i] < i ("moves down") is
// read only by later destinations k > i that also move down, and one with index[i] > i ("moves
// up") only by earlier destinations k < i that also move up; rows with index[i] == i never change.
// So the down-moves run in decreasing order, then the up-moves in increasing order, and every
// source is read before anything overwrites it.
#include <vector>

#include "strided_layout.h"
#include "ops.h"

namespace specalign {
namespace {

constexpr int64_t kItemBytes = 64 << 10;       // bytes of each row one work item moves
constexpr int64_t kParallelBytes = 256 << 10;  // below this, threads cost more than they save

// A slice of one tensor's row cells that a single thread moves for every forked row.
struct WorkItem {
  int64_t tensor, first_cell, num_cells, run_offset, run_bytes;
};

// The work items of one tensor: pieces of one cell's run when runs are long, groups of whole
// cells when they are short.
void add_items(int64_t t, const ByteRuns& layout, std::vector<WorkItem>& items) {
  const int64_t num_cells = layout.cells.count();
  if (layout.run_bytes >= kItemBytes) {
    for (int64_t cell = 0; cell < num_cells; ++cell) {
      for (int64_t offset = 0; offset < layout.run_bytes; offset += kItemBytes) {
        items.push_back({t, cell, 1, offset, std::min(kItemBytes, layout.run_bytes - offset)});
      }
    }
  } else {
    const int64_t cells_per_item = kItemBytes / layout.run_bytes;
    for (int64_t cell = 0; cell < num_cells; cell += cells_per_item) {
      items.push_back({t, cell, std::min(cells_per_item, num_cells - cell), 0, layout.run_bytes});
    }
  }
}

}  // namespace

void fork_rows_cpu(at::TensorList tensors, const at::Tensor& index, at::IntArrayRef dims) {
  TORCH_CHECK(static_cast<int64_t>(tensors.size()) == static_cast<int64_t>(dims.size()),
              "fork_rows: one dim per tensor");
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong, "fork_rows: index must be int64 [n]");
  const at::Tensor index_c = index.contiguous();
  const int64_t* source = index_c.const_data_ptr<int64_t>();
  const int64_t forked = index_c.numel();
  std::vector<int64_t> order;  // the destinations that change, in the order they are written
  for (int64_t i = forked - 1; i >= 0; --i) {
    if (source[i] < i) order.push_back(i);
  }
  for (int64_t i = 0; i < forked; ++i) {
    if (source[i] > i) order.push_back(i);
  }
  if (order.empty()) return;

  std::vector<ByteRuns> layouts;
  std::vector<WorkItem> items;
  for (int64_t t = 0; t < static_cast<int64_t>(tensors.size()); ++t) {
    const at::Tensor& tensor = tensors[t];
    TORCH_CHECK(0 <= dims[t] && dims[t] < tensor.dim() && tensor.size(dims[t]) >= forked,
                "fork_rows: bad dim or batch size for tensors[", t, "]");
    std::vector<int64_t> row_dims;
    for (int64_t d = 0; d < tensor.dim(); ++d) {
      if (d != dims[t]) row_dims.push_back(d);
    }
    layouts.emplace_back(tensor, row_dims);
    if (tensor.numel() > 0) add_items(t, layouts.back(), items);
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
        for (const int64_t i : order) {
          copy_bytes(cell_base + i * row_stride, cell_base + source[i] * row_stride, item.run_bytes);
        }
      }
    }
  };
  int64_t bytes = 0;
  for (const WorkItem& item : items) bytes += item.num_cells * item.run_bytes * static_cast<int64_t>(order.size());
  const auto num_items = static_cast<int64_t>(items.size());
  if (bytes < kParallelBytes) {
    move(0, num_items);
  } else {
    at::parallel_for(0, num_items, 1, move);
  }
}

}  // namespace specalign
