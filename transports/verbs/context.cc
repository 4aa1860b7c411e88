#include "transports/verbs/context.h"

#include <arpa/inet.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "src/base/env.h"

namespace m2n::transport::verbs {
namespace {

// A verbs variable through the one environment reader, its error prefixed with the transport.
StatusOr<int> ReadInt(const char* name, int min, int max, int fallback) {
  auto value = env::Int(name, min, max, fallback);
  if (!value.ok()) return value.status().WithContext("verbs");
  return static_cast<int>(*value);
}

std::string GidText(const ibv_gid& gid) {
  char text[INET6_ADDRSTRLEN] = {};
  inet_ntop(AF_INET6, gid.raw, text, sizeof text);
  return text;
}

bool IsZero(const ibv_gid& gid) {
  for (uint8_t b : gid.raw) {
    if (b != 0) return false;
  }
  return true;
}

// ::ffff:a.b.c.d, the GID RoCE v2 derives from an IPv4 address: routable, and what peers on an
// IPv4 fabric share.
bool IsIpv4Mapped(const ibv_gid& gid) {
  for (int i = 0; i < 10; ++i) {
    if (gid.raw[i] != 0) return false;
  }
  return gid.raw[10] == 0xff && gid.raw[11] == 0xff;
}

const char* GidTypeName(ibv_gid_type type) {
  switch (type) {
    case IBV_GID_TYPE_IB:
      return "IB";
    case IBV_GID_TYPE_ROCE_V1:
      return "RoCE v1";
    case IBV_GID_TYPE_ROCE_V2:
      return "RoCE v2";
  }
  return "?";
}

// The devices, freed on scope exit.
struct DeviceList {
  ibv_device** list = nullptr;
  int count = 0;
  DeviceList() { list = ibv_get_device_list(&count); }
  ~DeviceList() {
    if (list != nullptr) ibv_free_device_list(list);
  }
};

}  // namespace

std::string VerbError(std::string_view what, int err) {
  return "verbs: " + std::string(what) + ": " + std::strerror(err) + " (errno " +
         std::to_string(err) + ")";
}

StatusOr<VerbsOptions> VerbsOptionsFromEnv() {
  VerbsOptions o;
  o.device = env::String("M2N_VERBS_DEVICE", o.device);
  M2N_ASSIGN_OR_RETURN(o.port, ReadInt("M2N_VERBS_PORT", 0, 255, o.port));
  M2N_ASSIGN_OR_RETURN(o.gid_index, ReadInt("M2N_VERBS_GID_INDEX", -1, 1 << 16, o.gid_index));
  M2N_ASSIGN_OR_RETURN(o.timeout, ReadInt("M2N_VERBS_TIMEOUT", 0, 31, o.timeout));
  M2N_ASSIGN_OR_RETURN(o.retry_count, ReadInt("M2N_VERBS_RETRY_COUNT", 0, 7, o.retry_count));
  M2N_ASSIGN_OR_RETURN(o.rnr_retry, ReadInt("M2N_VERBS_RNR_RETRY", 0, 7, o.rnr_retry));
  M2N_ASSIGN_OR_RETURN(o.min_rnr_timer, ReadInt("M2N_VERBS_MIN_RNR_TIMER", 0, 31, o.min_rnr_timer));
  M2N_ASSIGN_OR_RETURN(o.traffic_class,
                       ReadInt("M2N_VERBS_TRAFFIC_CLASS", 0, 255, o.traffic_class));
  M2N_ASSIGN_OR_RETURN(o.ack_traffic_class,
                       ReadInt("M2N_VERBS_ACK_TRAFFIC_CLASS", -1, 255, o.ack_traffic_class));
  M2N_ASSIGN_OR_RETURN(o.service_level, ReadInt("M2N_VERBS_SL", 0, 15, o.service_level));
  M2N_ASSIGN_OR_RETURN(o.ack_service_level,
                       ReadInt("M2N_VERBS_ACK_SL", -1, 15, o.ack_service_level));
  M2N_ASSIGN_OR_RETURN(o.mtu, ReadInt("M2N_VERBS_MTU", 0, 4096, o.mtu));
  if (o.mtu != 0) M2N_RETURN_IF_ERROR(MtuFromBytes(o.mtu).status());
  M2N_ASSIGN_OR_RETURN(o.max_rd_atomic,
                       ReadInt("M2N_VERBS_MAX_RD_ATOMIC", 0, 255, o.max_rd_atomic));
  M2N_ASSIGN_OR_RETURN(o.rate_limit_mbps,
                       ReadInt("M2N_VERBS_RATE_LIMIT_MBPS", 0, 1 << 30, o.rate_limit_mbps));
  M2N_ASSIGN_OR_RETURN(o.inline_bytes, ReadInt("M2N_VERBS_INLINE", 0, 1 << 16, o.inline_bytes));
  M2N_ASSIGN_OR_RETURN(o.signal_every,
                       ReadInt("M2N_VERBS_SIGNAL_EVERY", 0, 1 << 16, o.signal_every));
  auto verbose = env::Bool("M2N_VERBS_VERBOSE", false);
  if (!verbose.ok()) return verbose.status().WithContext("verbs");
  o.verbose = *verbose;
  return o;
}

int MtuBytes(ibv_mtu mtu) {
  switch (mtu) {
    case IBV_MTU_256:
      return 256;
    case IBV_MTU_512:
      return 512;
    case IBV_MTU_1024:
      return 1024;
    case IBV_MTU_2048:
      return 2048;
    case IBV_MTU_4096:
      return 4096;
  }
  return 0;
}

StatusOr<ibv_mtu> MtuFromBytes(int bytes) {
  switch (bytes) {
    case 256:
      return IBV_MTU_256;
    case 512:
      return IBV_MTU_512;
    case 1024:
      return IBV_MTU_1024;
    case 2048:
      return IBV_MTU_2048;
    case 4096:
      return IBV_MTU_4096;
  }
  return InvalidArgumentError("verbs: M2N_VERBS_MTU=" + std::to_string(bytes) +
                              " is not one of 256, 512, 1024, 2048, 4096");
}

namespace {

// The port: the one asked for (`wanted` != 0) if active, else the first active one; 0 if none.
int ActivePort(ibv_context* device, const ibv_device_attr& device_attr, int wanted,
               ibv_port_attr* out) {
  for (int port = 1; port <= device_attr.phys_port_cnt; ++port) {
    if (wanted != 0 && port != wanted) continue;
    ibv_port_attr attr{};
    if (ibv_query_port(device, static_cast<uint8_t>(port), &attr) != 0) continue;
    if (attr.state != IBV_PORT_ACTIVE) continue;
    *out = attr;
    return port;
  }
  return 0;
}

}  // namespace

// The device and port: the ones asked for, else the first device with an active port.
Status Context::OpenDevice(ibv_device** list, int count, const VerbsOptions& options) {
  std::string tried;
  // The preferred device first (the topology's nearest NIC), then the rest in the system's order.
  std::vector<int> order;
  for (int i = 0; i < count; ++i) {
    if (!options.preferred_device.empty() &&
        options.preferred_device == ibv_get_device_name(list[i])) {
      order.insert(order.begin(), i);
    } else {
      order.push_back(i);
    }
  }
  for (int i : order) {
    const std::string name = ibv_get_device_name(list[i]);
    if (!options.device.empty() && name != options.device) continue;
    tried += (tried.empty() ? "" : ", ") + name;
    ibv_context* device = ibv_open_device(list[i]);
    if (device == nullptr) {
      if (!options.device.empty())
        return UnavailableError(VerbError("ibv_open_device(" + name + ")", errno));
      continue;
    }
    ibv_device_attr device_attr{};
    if (int err = ibv_query_device(device, &device_attr); err != 0) {
      ibv_close_device(device);
      return UnavailableError(VerbError("ibv_query_device(" + name + ")", err));
    }
    ibv_port_attr chosen_attr{};
    const int chosen = ActivePort(device, device_attr, options.port, &chosen_attr);
    if (chosen == 0) {
      ibv_close_device(device);
      if (!options.device.empty() || options.port != 0) {
        return UnavailableError("verbs: " + name +
                                (options.port != 0 ? " port " + std::to_string(options.port) : "") +
                                ": no active port (ibv_devinfo shows port states)");
      }
      continue;
    }
    device_ = device;
    device_name_ = name;
    device_attr_ = device_attr;
    port_ = chosen;
    port_attr_ = chosen_attr;
    break;
  }
  if (device_ == nullptr) {
    if (!options.device.empty() && tried.empty()) {
      std::string all;
      for (int i = 0; i < count; ++i)
        all += std::string(i ? ", " : "") + ibv_get_device_name(list[i]);
      return UnavailableError(
          "verbs: device " + options.device +
          " (M2N_VERBS_DEVICE, or M2N_NIC / Options::nic) not found; devices here: " + all);
    }
    return UnavailableError("verbs: no device with an active port (tried " + tried + ")");
  }
  return OkStatus();
}

// The GID: the one asked for; else on RoCE a v2 GID of an IPv4 address, else any v2, else index 0.
Status Context::ChooseGid(const VerbsOptions& options) {
  const int port = port_;
  if (options.gid_index >= 0) {
    if (options.gid_index >= port_attr_.gid_tbl_len) {
      return InvalidArgumentError(
          "verbs: M2N_VERBS_GID_INDEX=" + std::to_string(options.gid_index) + " but " +
          device_name_ + " port " + std::to_string(port) + " has " +
          std::to_string(port_attr_.gid_tbl_len) + " GIDs");
    }
    gid_index_ = options.gid_index;
    gid_chosen_ = true;
  } else if (ethernet()) {
    int best = -1, best_rank = 0;
    for (int i = 0; i < port_attr_.gid_tbl_len; ++i) {
      ibv_gid_entry entry{};
      if (ibv_query_gid_ex(device_, port, i, &entry, 0) != 0) continue;
      ibv_gid gid;
      std::memcpy(gid.raw, entry.gid.raw, sizeof gid.raw);
      if (IsZero(gid)) continue;
      const int rank = entry.gid_type == IBV_GID_TYPE_ROCE_V2 ? (IsIpv4Mapped(gid) ? 3 : 2) : 1;
      if (rank > best_rank) {
        best = i;
        best_rank = rank;
      }
    }
    if (best < 0) {
      return UnavailableError("verbs: " + device_name_ + " port " + std::to_string(port) +
                              ": no usable GID (is the netdev up and addressed?)");
    }
    gid_index_ = best;
  }
  if (int err = ibv_query_gid(device_, static_cast<uint8_t>(port), gid_index_, &gid_); err != 0) {
    return UnavailableError(VerbError(
        "ibv_query_gid(" + device_name_ + ", index " + std::to_string(gid_index_) + ")", err));
  }
  return OkStatus();
}

StatusOr<std::shared_ptr<Context>> Context::Open(const VerbsOptions& options) {
  DeviceList devices;
  if (devices.list == nullptr) {
    return UnavailableError(VerbError("ibv_get_device_list", errno));
  }
  if (devices.count == 0) {
    return UnavailableError(
        "verbs: no RDMA device here (ibv_get_device_list found none; is an RDMA driver loaded, "
        "e.g. mlx5_ib, or a Soft-RoCE device added with `rdma link add rxe0 type rxe netdev "
        "eth0`?)");
  }
  std::shared_ptr<Context> ctx(new Context());
  M2N_RETURN_IF_ERROR(ctx->OpenDevice(devices.list, devices.count, options));
  M2N_RETURN_IF_ERROR(ctx->ChooseGid(options));
  const int port = ctx->port_;
  ibv_gid_entry entry{};
  ctx->gid_type_ = ibv_query_gid_ex(ctx->device_, port, ctx->gid_index_, &entry, 0) == 0
                       ? GidTypeName(static_cast<ibv_gid_type>(entry.gid_type))
                       : "?";
  ctx->pd_ = ibv_alloc_pd(ctx->device_);
  if (ctx->pd_ == nullptr)
    return UnavailableError(VerbError("ibv_alloc_pd(" + ctx->device_name_ + ")", errno));
  if (options.verbose) std::fprintf(stderr, "m2n verbs: %s\n", ctx->Describe().c_str());
  return ctx;
}

Context::~Context() {
  if (pd_ != nullptr) ibv_dealloc_pd(pd_);
  if (device_ != nullptr) ibv_close_device(device_);
}

std::string Context::Describe() const {
  return device_name_ + " port " + std::to_string(port_) + " GID[" + std::to_string(gid_index_) +
         "] " + GidText(gid_) + " (" + gid_type_ + ", " + (ethernet() ? "Ethernet" : "InfiniBand") +
         ", LID " + std::to_string(port_attr_.lid) + ", active MTU " +
         std::to_string(MtuBytes(port_attr_.active_mtu)) + ")";
}

Status Probe() {
  M2N_ASSIGN_OR_RETURN(VerbsOptions options, VerbsOptionsFromEnv());
  options.verbose = false;
  M2N_ASSIGN_OR_RETURN(auto ctx, Context::Open(options));
  return OkStatus();
}

}  // namespace m2n::transport::verbs
