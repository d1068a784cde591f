//! Birdbone's integration tests. One binary; modules by area:
//!
//! - `loader`: plugins loaded from their `.so` files, rejected ones, component configuration.
//! - `trust`: what is refused before a plugin's code runs here (FIFOs, permissions, an
//!   allowlist), the probe (constructors that abort, exit or hang), the probed copy loaded.
//! - `prune`: exact counts, N:M validity and failure safety on the real SmolLM2 weights.
//! - `masks`: saving, loading, and holding pruned weights at zero through optimizer steps.
//! - `models`: a `VarStore` and a TorchScript `CModule` pruned in place.
//! - `gguf`: the importer on the real checkpoint, SentencePiece and Qwen2 files against
//!   transformers, K-quants against the gguf package, truncated and corrupt files.
//! - `faults`: the fault suite (hostile files, configs, parameters, outputs, signals, a full
//!   disk), which writes docs/fault-suite.md.
//! - `families`: Mistral, Qwen2 and Llama 3 against transformers; unimplemented config fields.
//! - `llama`: the runtime on the real model: generation, logits against transformers,
//!   perplexity, calibration statistics, Wanda against magnitude.
//! - `serve`: the example server over HTTP: plugins reloaded live (a bad library refused, a
//!   component upgraded), traffic statistics, graceful shutdown, and the soak (every answer
//!   from one version of the weights while re-prunes and undos commit).
//! - `serve_limits`: its limits (body, tokens, connections, idle connections), typed requests
//!   and the admin token.
//! - `cli`: the `birdbone` command: recipes, calibration, the folder transformers loads, hub
//!   ids, JSON output, pictures, bad input.
//! - `reconstruct`: SparseGPT against fasterprune written out, the sequential pass as one
//!   transaction, an unfactorable Hessian, RIA's formula, both through `prune` and recipes, and
//!   perplexity within 1% of the reference script.
//! - `undo`: a failed commit rolled back bit for bit, passes taken back, the callback's masks.
//! - `upgrade`: a newer version of a plugin component replaces the loaded one live; older or
//!   equal versions and changes of kind are refused.
//! - `gpu`, `gpu_reconstruct`: CUDA paths against the CPU path; they return early where no GPU
//!   is present.

mod allocation;
mod checks;
mod cli;
mod families;
mod faults;
mod gguf;
mod gpu;
mod gpu_reconstruct;
mod layer_plates;
mod llama;
mod loader;
mod masks;
mod models;
mod prune;
mod reconstruct;
mod serve;
mod serve_limits;
mod train;
mod trust;
mod undo;
mod upgrade;
