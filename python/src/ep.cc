// Binds m2n::ExpertParallel (include/m2n/ep.h) as ExpertParallel and ExpertBatch of the extension;
// python/m2n/ep.py re-exports them as m2n.ep. Every array is checked here (type, dtype, shape,
// contiguity, host memory) before C++ sees it: the C++ layer takes raw pointers and sizes, so a
// short `out` would otherwise be written past its end.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "buffers.h"
#include "ep_doc.h"
#include "errors.h"
#include "group.h"
#include "m2n/ep.h"

namespace m2n::python {
namespace {

namespace dl = nb::dlpack;

struct PyExpertParallel {
  nb::object group;  // the PyGroup: first, so that it goes after the layer
  std::unique_ptr<ExpertParallel> ep;
  ExpertParallelOptions options;
  std::deque<int> in_flight;  // tokens of each dispatch whose combine is not received yet
  int last_rows = -1;  // rows of the batch that combine answers; -1: none received

  // The layer, or m2n.FailedPreconditionError once its group is closed.
  ExpertParallel& get() {
    nb::cast<PyGroup&>(group).get();
    return *ep;
  }
};

struct PyExpertBatch {
  uint64_t call = 0;
  int rows = 0;
  nb::object x, experts, counts, offsets, source_rank, source_token, source_slot, weight;
};

enum class Element { kRow, kInt32, kFloat32 };  // kRow: the layer's dtype

std::string DtypeName(dl::dtype t) {
  if (t.code == uint8_t(dl::dtype_code::Float)) return "float" + std::to_string(t.bits);
  if (t.code == uint8_t(dl::dtype_code::Int)) return "int" + std::to_string(t.bits);
  if (t.code == uint8_t(dl::dtype_code::UInt)) return "uint" + std::to_string(t.bits);
  if (t.code == uint8_t(dl::dtype_code::Bfloat)) return "bfloat" + std::to_string(t.bits);
  return "DLPack type code " + std::to_string(t.code) + " of " + std::to_string(t.bits) + " bits";
}

bool Accepts(Element e, DataType row, dl::dtype t) {
  const bool f32 = t == nb::dtype<float>();
  switch (e) {
    case Element::kInt32:
      return t == nb::dtype<int32_t>();
    case Element::kFloat32:
      return f32;
    case Element::kRow:
      if (row == DataType::kFloat32) return f32;
      return t == nb::dtype<uint16_t>() ||
             (t.code == uint8_t(dl::dtype_code::Bfloat) && t.bits == 16 && t.lanes == 1);
  }
  return false;
}

const char* Expected(Element e, DataType row) {
  if (e == Element::kInt32) return "int32";
  if (e == Element::kFloat32 || row == DataType::kFloat32) return "float32";
  return "uint16 holding bfloat16 bits (or ml_dtypes.bfloat16)";
}

// numpy cannot export ml_dtypes.bfloat16 through the buffer protocol: take its bits as uint16.
nb::object Normalized(nb::handle obj) {
  if (nb::hasattr(obj, "dtype") && nb::hasattr(obj, "view") && nb::hasattr(obj, "__array__") &&
      nb::str(obj.attr("dtype")).equal(nb::str("bfloat16"))) {
    return obj.attr("view")(nb::module_::import_("numpy").attr("uint16"));
  }
  return nb::borrow(obj);
}

std::string ShapeOf(const AnyArray& a) {
  std::string s = "(";
  for (size_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

struct Rows {
  std::byte* data;
  int rows;
};

// The bytes of a 2-D host array `what` of `rows` (or any, when -1) x `cols` elements; raises
// TypeError / m2n.InvalidArgumentError / m2n.UnimplementedError naming `what` otherwise.
// `writable`: the array is written (out), so a read-only one is refused.
Rows RowsOf(nb::handle obj, const char* what, Element e, DataType row, int64_t rows, int64_t cols,
            bool writable = false) {
  nb::object array_object = Normalized(obj);
  AnyArray a;
  if (!nb::try_cast(array_object, a)) {
    throw nb::type_error((std::string(what) +
                          ": expected an array (numpy, buffer protocol or "
                          "DLPack), got " +
                          nb::type_name(obj.type()).c_str())
                             .c_str());
  }
  if (a.device_type() == nb::device::cuda::value) {
    ThrowStatus(UnimplementedError(std::string(what) +
                                   ": CUDA arrays (torch tensors on a GPU) are not supported by "
                                   "m2n.ep yet (no device path); pass a CPU array"));
  }
  if (!Accepts(e, row, a.dtype())) {
    throw nb::type_error(
        (std::string(what) + ": dtype " + DtypeName(a.dtype()) + ", expected " + Expected(e, row))
            .c_str());
  }
  if (a.ndim() != 2 || (rows >= 0 && int64_t(a.shape(0)) != rows) || int64_t(a.shape(1)) != cols) {
    ThrowStatus(InvalidArgumentError(std::string(what) + ": shape " + ShapeOf(a) + ", expected (" +
                                     (rows >= 0 ? std::to_string(rows) : std::string("tokens")) +
                                     ", " + std::to_string(cols) + ")"));
  }
  nb::ndarray<> w;
  if (writable && !nb::try_cast(array_object, w)) {
    ThrowStatus(InvalidArgumentError(std::string(what) + ": the array is read-only"));
  }
  // An empty array has no bytes to send (and numpy may give it any strides): the C++ calls take
  // null for zero rows.
  if (a.size() == 0) return {nullptr, int(a.shape(0))};
  return {BytesOf(a, what).data, int(a.shape(0))};
}

// A numpy array the caller owns, holding a copy of rows x cols (cols 0: 1-D) elements at `data`.
template <typename T>
nb::object Copy(const void* data, size_t rows, size_t cols = 0) {
  const size_t n = rows * (cols ? cols : 1);
  T* copy = new T[n ? n : 1];
  if (n) std::memcpy(copy, data, n * sizeof(T));
  nb::capsule owner(copy, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  const size_t shape[2] = {rows, cols};
  return nb::cast(nb::ndarray<nb::numpy, T>(copy, cols ? 2 : 1, shape, owner));
}

DataType DataTypeNamed(const std::string& name) {
  if (name == "float32") return DataType::kFloat32;
  if (name == "bfloat16") return DataType::kBFloat16;
  ThrowStatus(
      InvalidArgumentError("dtype: \"" + name + "\" is neither \"float32\" nor \"bfloat16\""));
}

ExpertParallelOptions OptionsOf(int num_experts, int top_k, int hidden, const std::string& dtype,
                                int max_tokens, const std::optional<std::vector<int>>& placement) {
  ExpertParallelOptions o;
  o.num_experts = num_experts;
  o.top_k = top_k;
  o.hidden = hidden;
  o.dtype = DataTypeNamed(dtype);
  o.max_tokens = max_tokens;
  if (placement) o.placement = *placement;
  return o;
}

PyExpertBatch BatchOf(const ExpertBatch& b, const ExpertParallelOptions& o) {
  PyExpertBatch p;
  p.call = b.call;
  p.rows = b.rows;
  const size_t rows = size_t(b.rows);
  p.x = o.dtype == DataType::kFloat32 ? Copy<float>(b.x, rows, size_t(o.hidden))
                                      : Copy<uint16_t>(b.x, rows, size_t(o.hidden));
  p.experts = Copy<int32_t>(b.experts.data(), b.experts.size());
  p.counts = Copy<int32_t>(b.counts.data(), b.counts.size());
  p.offsets = Copy<int32_t>(b.offsets.data(), b.offsets.size());
  std::vector<int32_t> rank(rows), token(rows), slot(rows);
  std::vector<float> weight(rows);
  for (size_t i = 0; i < rows; ++i) {
    rank[i] = b.sources[i].rank;
    token[i] = b.sources[i].token;
    slot[i] = b.sources[i].top_k_slot;
    weight[i] = b.sources[i].weight;
  }
  p.source_rank = Copy<int32_t>(rank.data(), rows);
  p.source_token = Copy<int32_t>(token.data(), rows);
  p.source_slot = Copy<int32_t>(slot.data(), rows);
  p.weight = Copy<float>(weight.data(), rows);
  return p;
}

void Dispatch(PyExpertParallel& self, nb::handle x, nb::handle ids, nb::handle weights,
              double timeout) {
  const ExpertParallelOptions& o = self.options;
  const Rows xs = RowsOf(x, "x", Element::kRow, o.dtype, -1, o.hidden);
  const int tokens = xs.rows;
  const auto* id = reinterpret_cast<const int32_t*>(
      RowsOf(ids, "topk_ids", Element::kInt32, o.dtype, tokens, o.top_k).data);
  const auto* w = reinterpret_cast<const float*>(
      RowsOf(weights, "topk_weights", Element::kFloat32, o.dtype, tokens, o.top_k).data);
  ExpertParallel& ep = self.get();  // everything that may raise, before the GIL is let go
  const Deadline deadline = DeadlineIn(timeout);
  const size_t pairs = size_t(tokens) * size_t(o.top_k);
  Status s;
  {
    nb::gil_scoped_release unlocked;
    s = ep.Dispatch(xs.data, tokens, {id, pairs}, {w, pairs}, deadline);
  }
  Check(s);
  self.in_flight.push_back(tokens);
}

nb::object ReceiveCombine(PyExpertParallel& self, nb::handle out, double timeout) {
  if (self.in_flight.empty()) {
    ThrowStatus(FailedPreconditionError("receive_combine: no dispatch is waiting for its combine"));
  }
  const ExpertParallelOptions& o = self.options;
  std::byte* data =
      RowsOf(out, "out", Element::kRow, o.dtype, self.in_flight.front(), o.hidden, true).data;
  ExpertParallel& ep = self.get();
  const Deadline deadline = DeadlineIn(timeout);
  Status s;
  {
    nb::gil_scoped_release unlocked;
    s = ep.ReceiveCombine(data, deadline);
  }
  Check(s);
  self.in_flight.pop_front();
  return nb::borrow(out);
}

PyExpertBatch ReceiveDispatch(PyExpertParallel& self, double timeout) {
  ExpertParallel& ep = self.get();
  const Deadline deadline = DeadlineIn(timeout);
  StatusOr<ExpertBatch> got = InvalidArgumentError("unset");
  {
    nb::gil_scoped_release unlocked;
    got = ep.ReceiveDispatch(deadline);
  }
  PyExpertBatch batch = BatchOf(Check(std::move(got)), self.options);
  self.last_rows = batch.rows;
  return batch;
}

void Combine(PyExpertParallel& self, nb::handle y, double timeout) {
  if (self.last_rows < 0) {
    ThrowStatus(FailedPreconditionError("combine: no batch from receive_dispatch to answer"));
  }
  const ExpertParallelOptions& o = self.options;
  const std::byte* data = RowsOf(y, "y", Element::kRow, o.dtype, self.last_rows, o.hidden).data;
  ExpertParallel& ep = self.get();
  const Deadline deadline = DeadlineIn(timeout);
  Status s;
  {
    nb::gil_scoped_release unlocked;
    s = ep.Combine(data, deadline);
  }
  Check(s);
  self.last_rows = -1;
}

void BindBatch(nb::module_& m) {
  nb::class_<PyExpertBatch>(m, "ExpertBatch", kBatchDoc)
      .def_ro("call", &PyExpertBatch::call, "The call number, from 0.")
      .def_ro("rows", &PyExpertBatch::rows)
      .def_ro("x", &PyExpertBatch::x, "[rows, hidden] rows grouped by local expert (a copy).")
      .def_ro("experts", &PyExpertBatch::experts, "This rank's experts: global ids, ascending.")
      .def_ro("counts", &PyExpertBatch::counts, "counts[l]: rows for experts[l].")
      .def_ro("offsets", &PyExpertBatch::offsets,
              "offsets[l]: the first row of experts[l]; offsets[-1] == rows.")
      .def_ro("source_rank", &PyExpertBatch::source_rank, "Per row: the attention rank.")
      .def_ro("source_token", &PyExpertBatch::source_token, "Per row: its token index there.")
      .def_ro("source_slot", &PyExpertBatch::source_slot, "Per row: j of topk_ids[token, j].")
      .def_ro("weight", &PyExpertBatch::weight, "Per row: topk_weights[token, j].")
      .def("__len__", [](const PyExpertBatch& b) { return b.rows; })
      .def("__repr__", [](const PyExpertBatch& b) {
        return "<m2n.ep.ExpertBatch call " + std::to_string(b.call) + ", " +
               std::to_string(b.rows) + " rows>";
      });
}

void BindProperties(nb::class_<PyExpertParallel>& c) {
  c.def_prop_ro("num_experts", [](const PyExpertParallel& p) { return p.options.num_experts; })
      .def_prop_ro("top_k", [](const PyExpertParallel& p) { return p.options.top_k; })
      .def_prop_ro("hidden", [](const PyExpertParallel& p) { return p.options.hidden; })
      .def_prop_ro("max_tokens", [](const PyExpertParallel& p) { return p.options.max_tokens; })
      .def_prop_ro(
          "dtype",
          [](const PyExpertParallel& p) {
            return std::string(p.options.dtype == DataType::kFloat32 ? "float32" : "bfloat16");
          },
          "\"float32\" or \"bfloat16\".")
      .def_prop_ro(
          "calls_in_flight", [](PyExpertParallel& p) { return p.get().calls_in_flight(); },
          "Dispatches whose combine has not been received (attention ranks).");
}

}  // namespace

void BindExpertParallel(nb::module_& m) {
  BindBatch(m);
  nb::class_<PyExpertParallel> c(m, "ExpertParallel", kExpertParallelDoc);
  c.def(
       "__init__",
       [](PyExpertParallel* self, PyGroup& group, int num_experts, int top_k, int hidden,
          int max_tokens, const std::string& dtype, std::optional<std::vector<int>> placement) {
         ExpertParallelOptions o =
             OptionsOf(num_experts, top_k, hidden, dtype, max_tokens, placement);
         Group& g = group.get();
         std::unique_ptr<ExpertParallel> ep = Check(ExpertParallel::Create(g, o));
         new (self) PyExpertParallel{nb::find(&group), std::move(ep), o, {}, -1};
       },
       nb::arg("group"), nb::kw_only(), nb::arg("num_experts"), nb::arg("top_k"), nb::arg("hidden"),
       nb::arg("max_tokens"), nb::arg("dtype") = "float32",
       nb::arg("placement").none() = nb::none(), kInitDoc)
      .def_static(
          "slot_bytes_needed",
          [](int num_senders, int num_receivers, int num_experts, int top_k, int hidden,
             int max_tokens, const std::string& dtype, std::optional<std::vector<int>> placement) {
            return Check(ExpertParallel::SlotBytesNeeded(
                OptionsOf(num_experts, top_k, hidden, dtype, max_tokens, placement), num_senders,
                num_receivers));
          },
          nb::arg("num_senders"), nb::arg("num_receivers"), nb::kw_only(), nb::arg("num_experts"),
          nb::arg("top_k"), nb::arg("hidden"), nb::arg("max_tokens"), nb::arg("dtype") = "float32",
          nb::arg("placement").none() = nb::none(), kSlotBytesNeededDoc)
      .def(
          "dispatch", &Dispatch, nb::arg("x"), nb::arg("topk_ids"), nb::arg("topk_weights"),
          nb::arg("timeout") = 60.0,
          nb::sig("def dispatch(self, x: numpy.typing.ArrayLike, topk_ids: numpy.typing.ArrayLike, "
                  "topk_weights: numpy.typing.ArrayLike, timeout: float = 60.0) -> None"),
          kDispatchDoc)
      .def("receive_combine", &ReceiveCombine, nb::arg("out"), nb::arg("timeout") = 60.0,
           nb::sig("def receive_combine(self, out: numpy.typing.NDArray, timeout: float = 60.0) "
                   "-> numpy.typing.NDArray"),
           kReceiveCombineDoc)
      .def("receive_dispatch", &ReceiveDispatch, nb::arg("timeout") = 60.0, kReceiveDispatchDoc)
      .def("combine", &Combine, nb::arg("y"), nb::arg("timeout") = 60.0,
           nb::sig("def combine(self, y: numpy.typing.ArrayLike, timeout: float = 60.0) -> None"),
           kCombineDoc);
  BindProperties(c);
}

}  // namespace m2n::python
