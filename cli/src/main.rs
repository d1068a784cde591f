//! `birdbone`: import a checkpoint, list plugins, prune a model from a recipe, apply saved
//! masks, measure perplexity, run the demo and the quality study.

mod allocation;
mod common;
mod demo_cmd;
mod eval_cmd;
mod masks_cmd;
mod output;
mod plot;
mod plot_cmd;
mod plugins_cmd;
mod progress;
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
    /// No progress bars or notes on standard error (results and errors still print).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prune a model (a folder or a cached hub id) from a recipe and flags, and write a model
    /// folder that transformers and vLLM load, with the recipe, report and masks beside it.
    Prune(Box<prune_cmd::Args>),
    /// Apply a saved mask file (masks.safetensors) to a model folder and write the result.
    ApplyMasks(masks_cmd::Args),
    /// Perplexity of a model on text (the evaluation protocol; see `--help`).
    Eval(eval_cmd::EvalCmd),
    /// Greedy continuation of a prompt.
    Generate(eval_cmd::GenerateArgs),
    /// List loaded plugin components, their parameters and capabilities, and rejected files.
    Plugins(plugins_cmd::Args),
    /// The quality table: perplexity dense and after magnitude and Wanda pruning (50/60/70%,
    /// 2:4, 4:8), one model load and one calibration.
    Study(study_cmd::Args),
    /// The demo: warm a live model up on calibration text, prune it 50% with Wanda in place,
    /// show perplexity and a sample before and after.
    Demo(demo_cmd::Args),
    /// Turn a GGUF checkpoint (Llama family) into a Hugging Face model folder.
    ImportGguf {
        /// The .gguf file.
        file: PathBuf,
        /// The folder to write config.json, model.safetensors and tokenizer.json into.
        out_dir: PathBuf,
        /// Replace a non-empty folder (swapped in only once the new one is complete).
        #[arg(long)]
        overwrite: bool,
    },
    /// Print the JSON Schema of recipe files (docs/recipe.schema.json).
    RecipeSchema,
    /// Draw the per-layer sparsity of saved allocations side by side, and perplexity against
    /// sparsity by allocator.
    PlotAllocation(plot_cmd::Args),
    /// Draw perplexity over the fine-tuning steps from a `birdbone-finetune --json` file.
    PlotFinetune(plot_cmd::FinetuneArgs),
}

fn main() {
    // A closed standard output (`birdbone plugins --json | head`) ends the program quietly
    // instead of a panic in println!.
    // SAFETY: setting a signal's disposition to the default at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    birdbone_host::init_logging();
    let cli = Cli::parse();
    progress::set_quiet(cli.quiet);
    let result = match cli.command {
        Command::ImportGguf {
            file,
            out_dir,
            overwrite,
        } => import(&file, &out_dir, overwrite),
        Command::Plugins(a) => plugins_cmd::run(a),
        Command::Prune(a) => prune_cmd::run(*a),
        Command::ApplyMasks(a) => masks_cmd::run(a),
        Command::Eval(a) => eval_cmd::eval(a),
        Command::Generate(a) => eval_cmd::generate(a),
        Command::Study(a) => study_cmd::run(a),
        Command::Demo(a) => demo_cmd::run(a),
        Command::PlotAllocation(a) => plot_cmd::run(a),
        Command::PlotFinetune(a) => plot_cmd::finetune(a),
        Command::RecipeSchema => {
            print!("{}", birdbone_host::Recipe::json_schema());
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("error: {}", error_text(&e));
        std::process::exit(1);
    }
}

/// The error and its causes, each said once: a cause whose text its parent already carries
/// is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn import(file: &std::path::Path, out: &std::path::Path, overwrite: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    output::check_target(out, file, overwrite)?;
    let mut bar: Option<progress::Progress> = None;
    let s = output::write_folder(out, |stage| {
        Ok(birdbone_gguf::import_llama_with(
            file,
            stage,
            &mut |done, total| {
                bar.get_or_insert_with(|| {
                    progress::Progress::new("import", total as u64, "tensors")
                })
                .set(done as u64)
            },
        )?)
    })?;
    if let Some(b) = bar {
        b.finish();
    }
    println!(
        "wrote {} ({}, {} tensors, {:.1} M parameters, vocabulary {}) in {:.1} s",
        out.display(),
        s.architecture,
        s.tensors,
        s.parameters as f64 / 1e6,
        s.vocab_size,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
