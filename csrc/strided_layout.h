// Byte-level strided views the compaction kernels move data with: any dimensions of a tensor walked
// as one flat index of cells, merged wherever memory allows.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace specalign {

// Some dimensions of a tensor walked as one flat index of cells, outermost first. Every kernel here
// moves each element on its own, so the dimensions may be visited in any order: they are sorted by
// stride and merged wherever memory allows (a transposed cache still walks as one dimension).
struct Cells {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (size, stride in bytes)

  Cells(const at::Tensor& t, const std::vector<int64_t>& which) {
    for (const int64_t d : which) {
      if (t.size(d) != 1) dims.emplace_back(t.size(d), t.stride(d) * t.element_size());
    }
    std::stable_sort(dims.begin(), dims.end(), [](const auto& x, const auto& y) { return x.second > y.second; });
    size_t merged = 0;
    for (size_t d = 1; d < dims.size(); ++d) {
      if (dims[merged].second == dims[d].first * dims[d].second) {
        dims[merged] = {dims[merged].first * dims[d].first, dims[d].second};
      } else {
        dims[++merged] = dims[d];
      }
    }
    dims.resize(std::min(dims.size(), merged + 1));
  }

  int64_t count() const {
    int64_t n = 1;
    for (const auto& dim : dims) n *= dim.first;
    return n;
  }
};

// The byte offset of one cell after another, in order, without a division per cell.
class CellWalker {
 public:
  CellWalker(const Cells& cells, int64_t first) : dims_(cells.dims), index_(dims_.size()) {
    for (int64_t d = static_cast<int64_t>(dims_.size()) - 1; d >= 0; --d) {
      index_[d] = first % dims_[d].first;
      first /= dims_[d].first;
      offset_ += index_[d] * dims_[d].second;
    }
  }

  int64_t offset() const { return offset_; }

  void next() {
    for (int64_t d = static_cast<int64_t>(dims_.size()) - 1; d >= 0; --d) {
      offset_ += dims_[d].second;
      if (++index_[d] < dims_[d].first) return;
      offset_ -= index_[d] * dims_[d].second;
      index_[d] = 0;
    }
  }

 private:
  const std::vector<std::pair<int64_t, int64_t>>& dims_;
  std::vector<int64_t> index_;
  int64_t offset_ = 0;
};

// Some dimensions of a tensor as cells of `run_bytes` contiguous bytes each.
struct ByteRuns {
  int64_t run_bytes;
  Cells cells;

  ByteRuns(const at::Tensor& t, const std::vector<int64_t>& which) : run_bytes(t.element_size()), cells(t, which) {
    if (!cells.dims.empty() && cells.dims.back().second == run_bytes) {
      run_bytes *= cells.dims.back().first;
      cells.dims.pop_back();
    }
  }
};

// memcpy, with the sizes of single elements spelled out so that a strided copy is one move each.
inline void copy_bytes(char* dst, const char* src, int64_t n) {
  switch (n) {
    case 1: std::memcpy(dst, src, 1); break;
    case 2: std::memcpy(dst, src, 2); break;
    case 4: std::memcpy(dst, src, 4); break;
    case 8: std::memcpy(dst, src, 8); break;
    case 16: std::memcpy(dst, src, 16); break;
    default: std::memcpy(dst, src, n);
  }
}

}  // namespace specalign
