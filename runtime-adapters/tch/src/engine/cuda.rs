use birdbone_select::GlobalSelection;
use tch::Tensor;

use super::{GlobalSel, RowSel, Rule, Scores};
use crate::error::{Error, Result};

fn todo() -> Error {
    Error::Invalid("CUDA path not built yet".into())
}
pub(crate) fn global_selector(_d: usize, _k: u64, _p: usize) -> Result<Box<dyn GlobalSel>> {
    Err(todo())
}
pub(crate) fn select_per_row(_s: &Scores, _k: u64) -> Result<RowSel> {
    Err(todo())
}
pub(crate) fn build_mask(_s: &Scores, _r: &Rule) -> Result<(Tensor, u64)> {
    Err(todo())
}
pub(crate) fn find_non_finite(_t: &Tensor) -> Result<Option<u64>> {
    Err(todo())
}
pub(crate) fn apply_mask(_w: &Tensor, _m: &Tensor) -> Result<u64> {
    Err(todo())
}
pub(crate) fn prune_in_place(
    _w: &Tensor,
    _s: &Scores,
    _r: &Rule,
    _m: bool,
) -> Result<(Option<Tensor>, u64)> {
    Err(todo())
}
#[allow(dead_code)]
fn _unused(_: GlobalSelection) {}
