// Recording routing traces through the reference forward (record.h).
#include "offload/record.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include "reference/reference.h"

namespace moe::offload {
namespace {

std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    const char c = s[++i];
    out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
  }
  return out;
}

void AppendSoftmax(const float* logits, int n, std::vector<float>* out) {
  const float top = *std::max_element(logits, logits + n);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(static_cast<double>(logits[i] - top));
  for (int i = 0; i < n; ++i)
    out->push_back(static_cast<float>(std::exp(static_cast<double>(logits[i] - top)) / sum));
}

}  // namespace

m2n::StatusOr<std::vector<TracedPrompt>> ReadPrompts(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return m2n::NotFoundError("prompts " + path + ": cannot open");
  std::vector<TracedPrompt> prompts;
  int line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    const size_t a = line.find('\t'), b = a == std::string::npos ? a : line.find('\t', a + 1);
    if (b == std::string::npos ||
        (line.substr(a + 1, b - a - 1) != "0" && line.substr(a + 1, b - a - 1) != "1")) {
      return m2n::InvalidArgumentError("prompts " + path + ":" + std::to_string(line_no) +
                                       ": want KIND<TAB>0|1<TAB>TEXT");
    }
    TracedPrompt p{.kind = line.substr(0, a), .held_out = line[a + 1] == '1', .tokens = {}};
    for (unsigned char c : Unescape(line.substr(b + 1))) p.tokens.push_back(c);
    if (p.tokens.empty())
      return m2n::InvalidArgumentError("prompts " + path + ":" + std::to_string(line_no) +
                                       ": empty text");
    prompts.push_back(std::move(p));
  }
  return prompts;
}

m2n::StatusOr<Trace> RecordTrace(const ModelConfig& config, const WeightSource& weights,
                                 const std::vector<TracedPrompt>& prompts, int prompt_len) {
  if (config.vocab_size < 256) {
    return m2n::InvalidArgumentError("--trace: prompts are byte tokens, " + config.name +
                                     " has a vocabulary of " + std::to_string(config.vocab_size) +
                                     " (< 256)");
  }
  auto model = ReferenceModel::Load(config, weights, false);
  if (!model.ok()) return model.status();
  auto attention = LoadAttentionWeights(config, weights);  // for the prompt embeddings
  if (!attention.ok()) return attention.status();
  Trace t{.layers = config.num_hidden_layers,
          .experts = config.num_local_experts,
          .top_k = config.num_experts_per_tok,
          .embed_dim = config.hidden_size,
          .requests = {}};
  const size_t h = static_cast<size_t>(config.hidden_size);
  for (const TracedPrompt& p : prompts) {
    auto out = model->Forward(p.tokens, static_cast<int>(p.tokens.size()) - 1, 0.0);
    if (!out.ok()) return out.status();
    TraceRequest q{.kind = p.kind,
                   .held_out = p.held_out,
                   .tokens = static_cast<int>(p.tokens.size()),
                   .embedding = std::vector<float>(h, 0.0f),
                   .gates = {}};
    const int n = std::min<int>(prompt_len, q.tokens);
    for (int i = 0; i < n; ++i) {
      for (size_t j = 0; j < h; ++j)
        q.embedding[j] +=
            attention->embed[static_cast<size_t>(p.tokens[static_cast<size_t>(i)]) * h + j] / n;
    }
    for (size_t r = 0; r + static_cast<size_t>(t.experts) <= out->gate_logits.size();
         r += static_cast<size_t>(t.experts)) {
      AppendSoftmax(out->gate_logits.data() + r, t.experts, &q.gates);
    }
    t.requests.push_back(std::move(q));
  }
  return t;
}

}  // namespace moe::offload
