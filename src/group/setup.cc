// The store-assisted set-up of a Group, in the order GroupFactory::Create (create.cc) runs it:
// ranks and peers from the options, the bootstrap store (rank 0 serves it), the configuration
// every rank publishes and checks against everyone's, and the connection: receive slots, the
// transport's addresses and the slots' remote keys, exchanged through the store, then the
// per-peer protocol state and a barrier that says every rank is connected.
#include <unistd.h>

#include "group/impl.h"
#include "m2n/version.h"
#include "protocol/config_check.h"
#include "protocol/immediate.h"

namespace m2n {

namespace {

// spin_us = -1: spin 50 us unless this host runs more of the group's ranks than it has online
// cores; then a spinning rank only delays the rank it waits for, so yield at once.
// Every rank publishes its host name (PublishHost) whatever its own spin setting, since a rank with
// spin_us = -1 reads them all.
std::string HostName() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return host;
}

Status PublishHost(bootstrap::Store& store, int rank) {
  return store.SetString("m2n/host/" + std::to_string(rank), HostName());
}

// Where `owner` publishes the key to its slot block for `peer`.
std::string SlotKeyName(int owner, int peer) {
  return "m2n/slots/" + std::to_string(owner) + "/" + std::to_string(peer);
}

StatusOr<int> AutoSpinUs(bootstrap::Store& store, int world, Deadline deadline) {
  const std::string host = HostName();
  int local = 0;
  for (int r = 0; r < world; ++r) {
    M2N_ASSIGN_OR_RETURN(std::string other,
                         store.GetString("m2n/host/" + std::to_string(r), deadline));
    local += other == host;
  }
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  return local > cores ? 0 : 50;
}

// What every rank must agree on; `transport` is the chosen one's name, or why none was.
protocol::Fingerprint MakeFingerprint(const Options& options, int world,
                                      const std::string& transport) {
  return {
      {"m2n_version", kVersionString},
      {"world_size", std::to_string(world)},
      {"num_senders", std::to_string(options.num_senders)},
      {"num_receivers", std::to_string(options.num_receivers)},
      {"slot_bytes", std::to_string(options.slot_bytes)},
      {"slot_depth", std::to_string(options.slot_depth)},
      {"transport", transport},
      {"slot_memory", std::string(MemoryKindName(options.slot_memory))},
      {"checksum", std::string(options.checksum ? "on" : "off")},
      // Wire formats a version string may not tell apart (two builds of one version).
      {"immediate_format", std::to_string(protocol::kImmediateFormat)},
  };
}

}  // namespace

void Group::Impl::SetRanks(const Options& resolved) {
  options = resolved;
  rank = resolved.bootstrap.rank;
  world = resolved.bootstrap.world_size;
  role = rank < options.num_senders ? Role::kSender : Role::kReceiver;
  peer_index.assign(world, -1);
  if (role == Role::kSender) {
    for (int r = options.num_senders; r < world; ++r) peers.push_back(r);
  } else {
    for (int r = 0; r < options.num_senders; ++r) peers.push_back(r);
  }
  for (size_t i = 0; i < peers.size(); ++i) peer_index[peers[i]] = static_cast<int>(i);
}

// The checks ResolveOptions cannot make alone: they need the role, or the protocol's limits.
Status Group::Impl::CheckOptions() const {
  if (options.checksum && options.slot_memory != MemoryKind::kHost) {
    return InvalidArgumentError(me() +
                                ": Options::checksum needs receive slots in host memory (the CPU "
                                "computes the checksum); slot_memory is " +
                                std::string(MemoryKindName(options.slot_memory)));
  }
  if (world > protocol::kMaxRanks || options.slot_depth > protocol::kMaxSlots) {
    return InvalidArgumentError("options: at most " + std::to_string(protocol::kMaxRanks) +
                                " ranks and " + std::to_string(protocol::kMaxSlots) +
                                " slots per peer");
  }
  return OkStatus();
}

Status Group::Impl::ConnectStore(Deadline deadline) {
  const BootstrapOptions& b = options.bootstrap;
  bootstrap::TcpStoreOptions store_options;
  store_options.host = b.master_addr;
  store_options.port = b.master_port;
  store_options.serve = b.rank == 0;
  store_options.rank = b.rank;
  store_options.world_size = b.world_size;
  store_options.job_id = b.job_id;
  store_options.job_key = b.job_key;
  auto connected = bootstrap::ConnectTcpStore(store_options, deadline);
  if (!connected.ok()) return connected.status().WithContext(me());
  store = std::move(connected).value();
  return OkStatus();
}

// Every rank publishes what it was configured with and checks everyone's, before anything is
// allocated: a mismatch is reported on every rank, naming the field and the ranks. On agreement,
// spin_us = -1 is resolved here, from the host names every rank published.
Status Group::Impl::AgreeOnConfiguration(const std::string& chosen_transport, Deadline deadline) {
  M2N_RETURN_IF_ERROR(PublishHost(*store, rank));
  M2N_RETURN_IF_ERROR(store->SetString(
      "m2n/config/" + std::to_string(rank),
      protocol::EncodeFingerprint(MakeFingerprint(options, world, chosen_transport))));
  std::vector<protocol::Fingerprint> all(world);
  for (int r = 0; r < world; ++r) {
    auto text = store->GetString("m2n/config/" + std::to_string(r), deadline);
    if (!text.ok()) return text.status().WithContext(me() + ": configuration of " + RankName(r));
    auto decoded = protocol::DecodeFingerprint(*text);
    if (!decoded.ok())
      return decoded.status().WithContext(me() + ": configuration of " + RankName(r));
    all[r] = std::move(decoded).value();
  }
  Status agreed = protocol::CheckFingerprints(all);
  if (agreed.ok() && options.spin_us < 0) {
    M2N_ASSIGN_OR_RETURN(options.spin_us, AutoSpinUs(*store, world, deadline));
  }
  if (agreed.ok()) return agreed;
  // Rank 0 serves the store: it stays until every rank has read every configuration, so that
  // each one reports the mismatch rather than a vanished store. An Abort ends that wait and the
  // rank leaves without a goodbye (the mismatch found is still what it reports).
  (void)store->Add("m2n/config-checked", 1);
  const bool waited = rank != 0 || AwaitCount("m2n/config-checked", deadline);
  if (waited && !Aborted()) (void)store->Goodbye();
  return agreed.WithContext(me());
}

// Our receive slots, then every peer's address and key, through the store; then the per-peer
// state of the protocol, and a barrier so that nobody writes before every rank is connected.
Status Group::Impl::Connect(Deadline deadline) {
  M2N_RETURN_IF_ERROR(AllocateSlots());
  M2N_RETURN_IF_ERROR(ExchangeAddresses(deadline));
  M2N_RETURN_IF_ERROR(ExchangeSlotKeys(deadline));
  M2N_RETURN_IF_ERROR(PreparePeerState());
  return StoreBarrier("connected", deadline);
}

// Our receive slots, and for each peer a key that reaches only that peer's block of them: a sender
// cannot write (or, where keys allow reads, read) another sender's messages. The value published
// is the block's offset in the region the key describes (8 bytes, little-endian), then the key.
Status Group::Impl::AllocateSlots() {
  if (options.slot_memory == MemoryKind::kCuda && !core->transport->capabilities().cuda_memory) {
    return InvalidArgumentError(me() + ": Options::slot_memory is cuda, but transport '" +
                                transport_name + "' cannot place receive slots in CUDA memory");
  }
  M2N_ASSIGN_OR_RETURN(
      slots, core->transport->Allocate(block_bytes() * peers.size(), options.slot_memory));
  for (size_t i = 0; i < peers.size(); ++i) {
    auto key = slots->PackRemoteKeyFor(peers[i], block_bytes() * i, block_bytes());
    if (!key.ok()) return key.status().WithContext(me() + ": slot key for " + RankName(peers[i]));
    transport::Bytes value(sizeof(uint64_t));
    for (size_t b = 0; b < sizeof(uint64_t); ++b)
      value[b] = std::byte(uint64_t{key->offset} >> (8 * b));
    value.insert(value.end(), key->key.begin(), key->key.end());
    M2N_RETURN_IF_ERROR(store->Set(SlotKeyName(rank, peers[i]), value));
  }
  return OkStatus();
}

// Publishes our transport address for each peer, then connects to each peer's address for us.
Status Group::Impl::ExchangeAddresses(Deadline deadline) {
  for (int peer : peers) {
    M2N_ASSIGN_OR_RETURN(transport::Bytes address, core->transport->LocalAddress(peer));
    M2N_RETURN_IF_ERROR(
        store->Set("m2n/addr/" + std::to_string(rank) + "/" + std::to_string(peer), address));
  }
  for (int peer : peers) {
    M2N_ASSIGN_OR_RETURN(
        bootstrap::Bytes address,
        store->Get("m2n/addr/" + std::to_string(peer) + "/" + std::to_string(rank), deadline));
    Status s = core->transport->Connect(peer, address);
    if (!s.ok()) return s.WithContext(me() + ": connecting to " + RankName(peer));
  }
  return OkStatus();
}

// Each peer's key to our block of its slots, where the block starts in it, and our slot
// bookkeeping for the peer.
Status Group::Impl::ExchangeSlotKeys(Deadline deadline) {
  for (int peer : peers) {
    M2N_ASSIGN_OR_RETURN(bootstrap::Bytes value, store->Get(SlotKeyName(peer, rank), deadline));
    if (value.size() < sizeof(uint64_t)) {
      return DataLossError(me() + ": slots of " + RankName(peer) + ": a " +
                           std::to_string(value.size()) + "-byte key record");
    }
    uint64_t offset = 0;
    for (size_t b = 0; b < sizeof(uint64_t); ++b) offset |= uint64_t(value[b]) << (8 * b);
    auto remote =
        core->transport->UnpackRemoteKey(peer, std::span(value).subspan(sizeof(uint64_t)));
    if (!remote.ok()) return remote.status().WithContext(me() + ": slots of " + RankName(peer));
    if (offset > (*remote)->size() || block_bytes() > (*remote)->size() - offset) {
      return DataLossError(me() + ": slots of " + RankName(peer) + ": our block at " +
                           std::to_string(offset) + " does not fit the " +
                           std::to_string((*remote)->size()) + "-byte region of its key");
    }
    remote_slots.push_back(std::move(remote).value());
    remote_block_offset.push_back(offset);
    receive.emplace_back(peer, options.slot_depth, options.slot_bytes);
    credits.emplace_back(peer, options.slot_depth);
  }
  return OkStatus();
}

// Sequence counters and immediate seeds per peer, the checksum stage, the stream path's counts.
Status Group::Impl::PreparePeerState() {
  data_posted.assign(peers.size(), 0);
  peer_writes_in_flight.assign(peers.size(), 0);
  acks_posted.assign(peers.size(), 0);
  acks_heard.assign(peers.size(), 0);
  for (int peer : peers) {
    seed_out.push_back(protocol::ImmediateSeed(rank, peer));
    seed_in.push_back(protocol::ImmediateSeed(peer, rank));
  }
  if (options.checksum) {
    staging.resize(block_bytes() * peers.size());
    auto staged =
        core->transport->RegisterSource(staging.data(), staging.size(), MemoryKind::kHost);
    if (!staged.ok())
      return staged.status().WithContext(me() + ": registering the checksum staging buffer");
    staging_region = std::move(staged).value();
  }
  stream.sent.assign(peers.size(), 0);
  stream.received.assign(peers.size(), 0);
  stream.held.assign(peers.size() * static_cast<size_t>(options.slot_depth), 0);
  return OkStatus();
}

}  // namespace m2n
