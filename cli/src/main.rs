//! `birdbone`: import a checkpoint, list plugins, prune a model.

mod demo_cmd;
mod eval_cmd;
mod model_io;
mod plugins_cmd;
mod prune_cmd;
mod study_cmd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "birdbone",
    version,
    about = "Prune live libtorch models in place through stable-ABI plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Turn a GGUF checkpoint (Llama family) into a Hugging Face model folder.
    ImportGguf {
        /// The .gguf file.
        file: PathBuf,
        /// The folder to write config.json, model.safetensors and tokenizer.json into.
        out_dir: PathBuf,
    },
    /// List loaded plugin components, their parameters and capabilities, and rejected files.
    Plugins(plugins_cmd::Args),
    /// Prune a model's weights in place through the plugins and write the result.
    Prune(Box<prune_cmd::Args>),
    /// Perplexity of a model on text (the evaluation protocol; see `--help`).
    Eval(eval_cmd::EvalArgs),
    /// Greedy continuation of a prompt.
    Generate(eval_cmd::GenerateArgs),
    /// The demo: warm a live model up on calibration text, prune it 50% with Wanda in place,
    /// show perplexity and a sample before and after.
    Demo(demo_cmd::Args),
    /// The quality table: perplexity dense and after magnitude and Wanda pruning (50/60/70%,
    /// 2:4, 4:8), one model load and one calibration.
    Study(study_cmd::Args),
}

fn main() {
    birdbone_host::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::ImportGguf { file, out_dir } => import(&file, &out_dir),
        Command::Plugins(a) => plugins_cmd::run(a),
        Command::Prune(a) => prune_cmd::run(*a),
        Command::Eval(a) => eval_cmd::eval(a),
        Command::Generate(a) => eval_cmd::generate(a),
        Command::Study(a) => study_cmd::run(a),
        Command::Demo(a) => demo_cmd::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn import(file: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    eprintln!("importing {} ...", file.display());
    let s = birdbone_gguf::import_llama(file, out)?;
    println!(
        "wrote {} ({} tensors, {:.1} M parameters, vocabulary {}) in {:.1} s",
        out.display(),
        s.tensors,
        s.parameters as f64 / 1e6,
        s.vocab_size,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
