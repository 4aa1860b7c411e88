// The verbs transport's device: which RDMA device, port and GID it uses, the protection domain,
// and the QP settings read from M2N_VERBS_* variables (README.md has the table).
//
// A Context is shared by the transport and every region registered through it, so that a region
// that outlives the transport still deregisters against an open device.
#pragma once

#include <infiniband/verbs.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "m2n/status.h"

namespace m2n::transport::verbs {

// Everything M2N_VERBS_* can set. Fields left at their "auto" value are found by Context::Open.
struct VerbsOptions {
  std::string
      device;  // M2N_VERBS_DEVICE: e.g. mlx5_0, rxe0; empty: first device with an active port
  // Tried first when `device` is empty: the NIC nearest to the rank's GPU (Config::nic).
  std::string preferred_device;
  int port = 0;  // M2N_VERBS_PORT: 1-based; 0: first active port
  int gid_index = -1;  // M2N_VERBS_GID_INDEX: -1: a RoCE v2 IPv4-mapped GID, else RoCE v2, else 0
  // Queue pair settings (docs/congestion.md says what to set them to and why).
  int timeout = 18;  // M2N_VERBS_TIMEOUT: local ACK timeout, 4.096 us * 2^timeout (18: ~1.07 s)
  int retry_count = 7;  // M2N_VERBS_RETRY_COUNT: retransmissions before a send fails (0..7)
  int rnr_retry = 7;  // M2N_VERBS_RNR_RETRY: receiver-not-ready retries (7: forever)
  int min_rnr_timer = 12;  // M2N_VERBS_MIN_RNR_TIMER: RNR NAK delay code (12: 0.64 ms)
  int traffic_class = 0;  // M2N_VERBS_TRAFFIC_CLASS: data QPs' IP traffic class (DSCP << 2 | ECN)
  int ack_traffic_class = -1;  // M2N_VERBS_ACK_TRAFFIC_CLASS: ACK QPs'; -1: same as data
  int service_level = 0;  // M2N_VERBS_SL: data QPs' service level (InfiniBand) / priority
  int ack_service_level = -1;  // M2N_VERBS_ACK_SL: ACK QPs'; -1: same as data
  int mtu = 0;  // M2N_VERBS_MTU: path MTU in bytes (256..4096); 0: the port's active MTU
  int max_rd_atomic = 1;  // M2N_VERBS_MAX_RD_ATOMIC: outstanding RDMA reads / atomics per QP
  int rate_limit_mbps =
      0;  // M2N_VERBS_RATE_LIMIT_MBPS: per-QP rate limit where the NIC has it; 0: off
  int inline_bytes = 256;  // M2N_VERBS_INLINE: largest payload sent inline (capped by the device)
  int signal_every = 0;  // M2N_VERBS_SIGNAL_EVERY: signal one send in this many; 0: auto
  bool verbose = false;  // M2N_VERBS_VERBOSE=1: print the device, port and GID chosen
};

// Reads M2N_VERBS_*; errors name the variable and the bad value.
StatusOr<VerbsOptions> VerbsOptionsFromEnv();

// "verbs: <what>: <strerror(err)> (errno N)".
std::string VerbError(std::string_view what, int err);

class Context {
 public:
  // Opens the device, picks port and GID, allocates the protection domain.
  static StatusOr<std::shared_ptr<Context>> Open(const VerbsOptions& options);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  ibv_context* device() const { return device_; }
  ibv_pd* pd() const { return pd_; }
  const std::string& device_name() const { return device_name_; }
  int port() const { return port_; }
  int gid_index() const { return gid_index_; }
  const ibv_gid& gid() const { return gid_; }
  const ibv_port_attr& port_attr() const { return port_attr_; }
  const ibv_device_attr& device_attr() const { return device_attr_; }
  bool ethernet() const { return port_attr_.link_layer == IBV_LINK_LAYER_ETHERNET; }
  // Whether address handles need the GRH: always on RoCE, on InfiniBand only when a GID index
  // was chosen by the operator (routing between subnets).
  bool global_routing() const { return ethernet() || gid_chosen_; }
  // "rxe0 port 1 GID[1] ::ffff:10.77.0.1 (RoCE v2, Ethernet, MTU 1024)".
  std::string Describe() const;

 private:
  // Open's steps: the device and port, then the GID.
  Status OpenDevice(ibv_device** list, int count, const VerbsOptions& options);
  Status ChooseGid(const VerbsOptions& options);
  Context() = default;
  ibv_context* device_ = nullptr;
  ibv_pd* pd_ = nullptr;
  std::string device_name_;
  int port_ = 1;
  int gid_index_ = 0;
  bool gid_chosen_ = false;
  std::string gid_type_;
  ibv_gid gid_{};
  ibv_port_attr port_attr_{};
  ibv_device_attr device_attr_{};
};

// Whether the verbs transport can run here: a device exists and opens, and a port is active.
Status Probe();

// ibv_mtu <-> bytes.
int MtuBytes(ibv_mtu mtu);
StatusOr<ibv_mtu> MtuFromBytes(int bytes);

}  // namespace m2n::transport::verbs
