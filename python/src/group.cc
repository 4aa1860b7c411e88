// Binds m2n.Group, m2n.Message and m2n.MemoryRegion (group.h). Blocking calls release the GIL
// while they wait, so other Python threads run (and may call Group.abort()); timeouts are seconds.
#include "group.h"

#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <chrono>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "buffers.h"
#include "errors.h"
#include "group_doc.h"

namespace m2n::python {
namespace {

MemoryKind KindNamed(const std::string& name) {
  if (name == "host") return MemoryKind::kHost;
  if (name == "cuda") return MemoryKind::kCuda;
  ThrowStatus(
      InvalidArgumentError("slot_memory: \"" + name + "\" is neither \"host\" nor \"cuda\""));
}

PyMessage& Live(PyMessage& m) {
  if (m.released) {
    ThrowStatus(FailedPreconditionError("message from rank " + std::to_string(m.message.peer) +
                                        " (slot " + std::to_string(m.message.slot) +
                                        ") was released: its slot may hold another message now"));
  }
  if (nb::cast<PyGroup&>(m.group).group == nullptr) {
    ThrowStatus(FailedPreconditionError("message from rank " + std::to_string(m.message.peer) +
                                        ": its group is closed, and its slot with it"));
  }
  return m;
}

struct GroupArgs {
  int num_senders, num_receivers;
  size_t slot_bytes;
  int slot_depth;
  std::string transport, slot_memory;
  bool checksum;
  int spin_us;
  std::optional<int> rank, world_size, master_port;
  std::optional<std::string> master_addr, job_id;
  double timeout;
};

void Construct(PyGroup* self, const GroupArgs& a) {
  Options o;
  o.num_senders = a.num_senders;
  o.num_receivers = a.num_receivers;
  o.slot_bytes = a.slot_bytes;
  o.slot_depth = a.slot_depth;
  o.transport = a.transport;
  o.slot_memory = KindNamed(a.slot_memory);
  o.spin_us = a.spin_us;
  o.checksum = a.checksum;
  if (a.rank) o.bootstrap.rank = *a.rank;
  if (a.world_size) o.bootstrap.world_size = *a.world_size;
  if (a.master_port) o.bootstrap.master_port = *a.master_port;
  if (a.master_addr) o.bootstrap.master_addr = *a.master_addr;
  if (a.job_id) o.bootstrap.job_id = *a.job_id;
  o.bootstrap.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout * 1000));
  // Everything that may raise (KindNamed above) happens before the GIL is let go.
  StatusOr<std::unique_ptr<Group>> created = InvalidArgumentError("unset");
  {
    nb::gil_scoped_release unlocked;
    created = Group::Create(o);
  }
  new (self) PyGroup{Check(std::move(created))};
}

std::vector<SendRequest> RequestsOf(const std::vector<std::tuple<int, AnyArray>>& items) {
  std::vector<SendRequest> requests;
  requests.reserve(items.size());
  for (const auto& [peer, array] : items) {
    Bytes b = BytesOf(array, "send");
    requests.push_back({peer, b.data, b.size});
  }
  return requests;
}

std::vector<Message> MessagesOf(const std::vector<PyMessage*>& messages) {
  std::vector<Message> out;
  for (PyMessage* m : messages) out.push_back(Live(*m).message);
  return out;
}

PyMessage Wrap(PyGroup& g, const Message& message) {
  return PyMessage{message, g.get().options().slot_memory, false, nb::find(&g)};
}

std::vector<PyMessage> WrapAll(PyGroup& g, const std::vector<Message>& messages) {
  std::vector<PyMessage> out;
  for (const Message& m : messages) out.push_back(Wrap(g, m));
  return out;
}

void BindGroupProperties(nb::class_<PyGroup>& c) {
  c.def_prop_ro(
       "rank", [](PyGroup& g) { return g.get().rank(); }, "This process's rank in [0, M + N).")
      .def_prop_ro(
          "world_size", [](PyGroup& g) { return g.get().world_size(); }, "M + N.")
      .def_prop_ro(
          "num_senders", [](PyGroup& g) { return g.get().num_senders(); }, "M: ranks [0, M) send.")
      .def_prop_ro(
          "num_receivers", [](PyGroup& g) { return g.get().num_receivers(); },
          "N: ranks [M, M + N) receive.")
      .def_prop_ro(
          "role", [](PyGroup& g) { return std::string(RoleName(g.get().role())); },
          "This rank's side: \"sender\" or \"receiver\".")
      .def_prop_ro("is_sender", [](PyGroup& g) { return g.get().role() == Role::kSender; })
      .def_prop_ro(
          "peers",
          [](PyGroup& g) {
            auto p = g.get().peers();
            return std::vector<int>(p.begin(), p.end());
          },
          "Ranks on the other side, ascending: the only valid peers.")
      .def_prop_ro(
          "transport", [](PyGroup& g) { return std::string(g.get().transport_name()); },
          "The transport in use, e.g. \"ucx\".")
      .def_prop_ro(
          "slot_bytes", [](PyGroup& g) { return g.get().options().slot_bytes; },
          "Largest message, in bytes.")
      .def_prop_ro(
          "slot_depth", [](PyGroup& g) { return g.get().options().slot_depth; },
          "Receive slots (credits) per peer.")
      .def_prop_ro("closed", [](PyGroup& g) { return g.group == nullptr; })
      .def(
          "describe_options", [](PyGroup& g) { return DescribeOptions(g.get().options()); },
          "The options as resolved (defaults, M2N_* variables, launcher), one line per field.")
      .def(
          "stats",
          [](PyGroup& g) {
            GroupStats s = g.get().stats();
            nb::dict d;
            d["messages_sent"] = s.messages_sent;
            d["bytes_sent"] = s.bytes_sent;
            d["messages_received"] = s.messages_received;
            d["bytes_received"] = s.bytes_received;
            d["acks_sent"] = s.acks_sent;
            d["acks_received"] = s.acks_received;
            d["credit_waits"] = s.credit_waits;
            return d;
          },
          "Counters since creation, as a dict.");
}

void BindHostCalls(nb::class_<PyGroup>& c) {
  c.def(
       "register",
       [](nb::handle self, nb::handle buffer) {
         PyGroup& g = nb::cast<PyGroup&>(self);
         Bytes b = BytesOf(nb::cast<AnyArray>(buffer), "register");
         PyRegion r{Check(g.get().RegisterMemory(b.data, b.size, b.kind)),
                    nb::borrow(buffer),
                    nb::borrow(self),
                    reinterpret_cast<uintptr_t>(b.data),
                    b.size,
                    std::string(MemoryKindName(b.kind))};
         return r;
       },
       nb::arg("buffer"), kRegisterDoc)
      .def(
          "send",
          [](PyGroup& g, int peer, AnyArray data, double timeout) {
            Bytes b = BytesOf(data, "send");
            Group& group = g.get();  // everything that may raise, before the GIL is let go
            const Deadline deadline = DeadlineIn(timeout);
            Status s;
            {
              nb::gil_scoped_release unlocked;
              s = group.Send(SendRequest{peer, b.data, b.size}, deadline);
            }
            Check(s);
          },
          nb::arg("peer"), nb::arg("data"), nb::arg("timeout") = 60.0, kSendDoc)
      .def(
          "send_many",
          [](PyGroup& g, const std::vector<std::tuple<int, AnyArray>>& items, double timeout) {
            std::vector<SendRequest> requests = RequestsOf(items);
            Group& group = g.get();
            const Deadline deadline = DeadlineIn(timeout);
            Status s;
            {
              nb::gil_scoped_release unlocked;
              s = group.Send(requests, deadline);
            }
            Check(s);
          },
          nb::arg("requests"), nb::arg("timeout") = 60.0, kSendManyDoc);
}

void BindReceiveCalls(nb::class_<PyGroup>& c) {
  c.def(
       "receive",
       [](PyGroup& g, int peer, double timeout) {
         Group& group = g.get();
         const Deadline deadline = DeadlineIn(timeout);
         StatusOr<Message> got = InvalidArgumentError("unset");
         {
           nb::gil_scoped_release unlocked;
           got = group.Receive(peer, deadline);
         }
         return Wrap(g, Check(std::move(got)));
       },
       nb::arg("peer"), nb::arg("timeout") = 60.0, kReceiveDoc)
      .def(
          "receive_many",
          [](PyGroup& g, std::vector<int> peers, double timeout) {
            Group& group = g.get();
            const Deadline deadline = DeadlineIn(timeout);
            std::vector<Message> out(peers.size());
            Status s;
            {
              nb::gil_scoped_release unlocked;
              s = group.Receive(peers, out, deadline);
            }
            Check(s);
            return WrapAll(g, out);
          },
          nb::arg("peers"), nb::arg("timeout") = 60.0, kReceiveManyDoc)
      .def(
          "try_receive",
          [](PyGroup& g, int peer) -> std::optional<PyMessage> {
            Message m;
            if (!Check(g.get().TryReceive(peer, &m))) return std::nullopt;
            return Wrap(g, m);
          },
          nb::arg("peer"), "The oldest unreceived message from `peer`, or None; never blocks.")
      .def(
          "release",
          [](PyGroup& g, nb::handle messages) {
            std::vector<PyMessage*> list;
            if (nb::isinstance<PyMessage>(messages)) {
              list.push_back(&nb::cast<PyMessage&>(messages));
            } else {
              list = nb::cast<std::vector<PyMessage*>>(messages);
            }
            Check(g.get().Release(MessagesOf(list)));
            for (PyMessage* m : list) m->released = true;
          },
          nb::arg("messages"),
          nb::sig(
              "def release(self, messages: Message | collections.abc.Sequence[Message]) -> None"),
          kReleaseDoc);
}

void BindStreamCalls(nb::class_<PyGroup>& c) {
  c.def(
       "send_on_stream",
       [](PyGroup& g, const std::vector<std::tuple<int, AnyArray>>& items, nb::handle stream) {
         Check(g.get().SendOnStream(RequestsOf(items), StreamOf(stream)));
       },
       nb::arg("requests"), nb::arg("stream").none() = nb::none(), kSendOnStreamDoc)
      .def(
          "receive_on_stream",
          [](PyGroup& g, std::vector<int> peers, nb::handle stream) {
            std::vector<Message> out(peers.size());
            Check(g.get().ReceiveOnStream(peers, out, StreamOf(stream)));
            // The host does not know the lengths: each view covers the whole slot.
            for (Message& m : out) m.length = g.get().options().slot_bytes;
            return WrapAll(g, out);
          },
          nb::arg("peers"), nb::arg("stream").none() = nb::none(), kReceiveOnStreamDoc)
      .def(
          "release_on_stream",
          [](PyGroup& g, const std::vector<PyMessage*>& messages, nb::handle stream) {
            Check(g.get().ReleaseOnStream(MessagesOf(messages), StreamOf(stream)));
            for (PyMessage* m : messages) m->released = true;
          },
          nb::arg("messages"), nb::arg("stream").none() = nb::none(), kReleaseOnStreamDoc);
}

void BindLifecycle(nb::class_<PyGroup>& c) {
  c.def(
       "barrier",
       [](PyGroup& g, double timeout) {
         Group& group = g.get();
         const Deadline deadline = DeadlineIn(timeout);
         Status s;
         {
           nb::gil_scoped_release unlocked;
           s = group.Barrier(deadline);
         }
         Check(s);
       },
       nb::arg("timeout") = 60.0,
       "Waits until every rank of the group calls barrier() (through the bootstrap store: set-up "
       "and tests, not per message).")
      .def(
          "progress", [](PyGroup& g) { Check(g.get().Progress()); },
          "One round of progress without blocking: completions, arrivals, ACKs. A rank that "
          "neither sends nor receives for long calls it.")
      .def(
          "close",
          [](PyGroup& g, double timeout) {
            if (!g.group) return;
            const Deadline deadline = DeadlineIn(timeout);
            Status s;
            {
              nb::gil_scoped_release unlocked;
              s = g.group->Close(deadline);
            }
            g.group.reset();
            Check(s);
          },
          nb::arg("timeout") = 60.0, kCloseDoc)
      .def(
          "abort",
          [](PyGroup& g) {
            if (g.group) g.group->Abort();
          },
          kAbortDoc)
      .def(
          "__enter__", [](PyGroup& g) -> PyGroup& { return g; }, nb::rv_policy::reference)
      .def("__exit__",
           [](PyGroup& g, nb::args exc) {
             if (!g.group) return;
             const bool raised = exc.size() > 0 && !exc[0].is_none();
             // Leaving by an exception: abort first, so that Close does not wait for peers.
             if (raised) g.group->Abort();
             const Deadline deadline = DeadlineIn(60);
             Status s;
             {
               nb::gil_scoped_release unlocked;
               s = g.group->Close(deadline);
             }
             g.group.reset();
             if (!raised) Check(s);
           })
      .def("__repr__", [](PyGroup& g) {
        if (!g.group) return std::string("<m2n.Group closed>");
        return "<m2n.Group rank " + std::to_string(g.group->rank()) + " of " +
               std::to_string(g.group->world_size()) + ", " +
               std::string(RoleName(g.group->role())) + ", " +
               std::to_string(g.group->num_senders()) + " x " +
               std::to_string(g.group->num_receivers()) + " over " +
               std::string(g.group->transport_name()) + ">";
      });
}

}  // namespace

Deadline DeadlineIn(double seconds) {
  if (seconds < 0)
    ThrowStatus(InvalidArgumentError("timeout: " + std::to_string(seconds) + " s is negative"));
  const double capped = seconds > 1e9 ? 1e9 : seconds;  // "forever" without overflowing the clock
  return Deadline::After(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(capped)));
}

Group& PyGroup::get() {
  if (!group) ThrowStatus(FailedPreconditionError("the group is closed"));
  return *group;
}

void BindGroup(nb::module_& m) {
  nb::class_<PyRegion>(m, "MemoryRegion", kRegionDoc)
      .def_prop_ro(
          "address", [](const PyRegion& r) { return r.address; }, "Address of the first byte.")
      .def_prop_ro("nbytes", [](const PyRegion& r) { return r.nbytes; })
      .def_prop_ro(
          "kind", [](const PyRegion& r) { return r.kind; }, "Memory kind: \"host\" or \"cuda\".")
      .def_prop_ro("registered", [](const PyRegion& r) { return r.region.has_value(); })
      .def_ro("buffer", &PyRegion::buffer, "The registered array.")
      .def(
          "deregister", [](PyRegion& r) { r.region.reset(); }, kDeregisterDoc)
      .def(
          "__enter__", [](PyRegion& r) -> PyRegion& { return r; }, nb::rv_policy::reference)
      .def("__exit__", [](PyRegion& r, nb::args) { r.region.reset(); });

  nb::class_<PyMessage>(m, "Message", kMessageDoc)
      .def_prop_ro(
          "peer", [](const PyMessage& x) { return x.message.peer; }, "The rank that sent it.")
      .def_prop_ro(
          "slot", [](const PyMessage& x) { return x.message.slot; }, "Its receive slot.")
      .def_prop_ro(
          "length", [](const PyMessage& x) { return x.message.length; },
          "Bytes (0 for stream-ordered receives).")
      .def_prop_ro(
          "sequence", [](const PyMessage& x) { return x.message.sequence; },
          "Count of messages from this peer before it.")
      .def_prop_ro(
          "address", [](const PyMessage& x) { return reinterpret_cast<uintptr_t>(x.message.data); },
          "Address of its first byte in the slot.")
      .def_prop_ro("released", [](const PyMessage& x) { return x.released; })
      .def_prop_ro(
          "data",
          [](nb::handle self) {
            PyMessage& x = Live(nb::cast<PyMessage&>(self));
            return ViewOf(x.message.data, x.message.length, x.kind, self);
          },
          nb::sig("def data(self) -> numpy.typing.NDArray[numpy.uint8]"), kDataDoc)
      .def("__len__", [](const PyMessage& x) { return x.message.length; })
      .def("__repr__", [](const PyMessage& x) {
        return "<m2n.Message from rank " + std::to_string(x.message.peer) + ", " +
               std::to_string(x.message.length) + " B, slot " + std::to_string(x.message.slot) +
               ", sequence " + std::to_string(x.message.sequence) +
               (x.released ? ", released>" : ">");
      });

  nb::class_<PyGroup> group(m, "Group", kGroupDoc);
  group.def(
      "__init__",
      [](PyGroup* self, int num_senders, int num_receivers, size_t slot_bytes, int slot_depth,
         std::string transport, std::string slot_memory, bool checksum, int spin_us,
         std::optional<int> rank, std::optional<int> world_size,
         std::optional<std::string> master_addr, std::optional<int> master_port,
         std::optional<std::string> job_id, double timeout) {
        Construct(self,
                  {num_senders, num_receivers, slot_bytes, slot_depth, transport, slot_memory,
                   checksum, spin_us, rank, world_size, master_port, master_addr, job_id, timeout});
      },
      nb::arg("num_senders") = 0, nb::arg("num_receivers") = 0, nb::kw_only(),
      nb::arg("slot_bytes") = size_t{1} << 20, nb::arg("slot_depth") = 4,
      nb::arg("transport") = "auto", nb::arg("slot_memory") = "host", nb::arg("checksum") = false,
      nb::arg("spin_us") = -1, nb::arg("rank") = nb::none(), nb::arg("world_size") = nb::none(),
      nb::arg("master_addr") = nb::none(), nb::arg("master_port") = nb::none(),
      nb::arg("job_id") = nb::none(), nb::arg("timeout") = 30.0, kInitDoc);
  BindGroupProperties(group);
  BindHostCalls(group);
  BindReceiveCalls(group);
  BindStreamCalls(group);
  BindLifecycle(group);
}

}  // namespace m2n::python
