//! The plan driver over a backend with no tensor library at all (weights in `Vec<f32>`,
//! selections by `birdbone-select`): what a second adapter gets from the host for free.

use abi_stable::std_types::{RResult, RSlice, RVec};
use birdbone_host::{
    plan::{all_decided, PlanBackend, PlanDriver, Rule},
    role_of, Error,
};
use birdbone_host_api::{
    DType, Decision, Device, DeviceKind, HostOps_Ref, NmPattern, ParamInfo, PlanContext,
    PluginError, ScoreRequest, SelectScope, Selection, Tensor, TensorId,
};
use birdbone_select::{select_global, Elems, GlobalSelection, ScoreSource};

/// A plan of one parameter as this backend's commit would apply it.
#[derive(Debug, PartialEq)]
enum Planned {
    Keep,
    Prune { pruned: u64, what: String },
}

struct VecBackend {
    weights: Vec<Vec<f32>>,
    protected: Vec<bool>,
}

impl VecBackend {
    fn select(&self, params: &[u32], k: u64) -> Result<GlobalSelection, Error> {
        let sources: Vec<ScoreSource<'_>> = params
            .iter()
            .map(|&p| ScoreSource::Magnitude(Elems::F32(&self.weights[p as usize])))
            .collect();
        select_global(&sources, k).map_err(|e| Error::Invalid(e.to_string()))
    }
}

impl PlanBackend for VecBackend {
    type Error = Error;
    type RowSel = u64;
    type Planned = Planned;

    fn guard<T>(f: impl FnOnce() -> Result<T, Error>) -> RResult<T, PluginError> {
        f().map_err(|e| e.to_plugin_error()).into()
    }
    fn copy_error(e: &Error) -> Error {
        e.copy()
    }
    fn host_ops(&self) -> HostOps_Ref {
        unreachable!("the tests lend no host operations")
    }
    fn has_protected_rows(&self, p: u32) -> bool {
        self.protected[p as usize]
    }
    fn plugin_scores(&mut self, _: u32, _: ScoreRequest) -> Result<Tensor, Error> {
        Err(Error::Invalid("no scores here".into()))
    }
    fn select_global(&mut self, params: &[u32], k: u64) -> Result<GlobalSelection, Error> {
        self.select(params, k)
    }
    fn select_each(&mut self, params: &[u32], ks: &[u64]) -> Result<Vec<GlobalSelection>, Error> {
        params
            .iter()
            .zip(ks)
            .map(|(&p, &k)| self.select(&[p], k))
            .collect()
    }
    fn select_rows(&mut self, _: &[u32], ks: &[u64], _: &[u64]) -> Result<Vec<u64>, Error> {
        Ok(ks.to_vec())
    }
    fn share_rows(rows: &u64) -> u64 {
        *rows
    }
    fn plan_rule(
        &mut self,
        _: u32,
        _: Rule<u64>,
        pruned: u64,
        what: String,
    ) -> Result<Planned, Error> {
        Ok(Planned::Prune { pruned, what })
    }
    fn plan_mask(&mut self, _: u32, _: TensorId) -> Result<Planned, Error> {
        Err(Error::Invalid("no masks here".into()))
    }
    fn plan_keep(&mut self, _: u32) -> Planned {
        Planned::Keep
    }
    fn lend_weight(&mut self, _: u32) -> Result<Tensor, Error> {
        Err(Error::Invalid("no tensors here".into()))
    }
    fn lend_hessian(&mut self, _: u32) -> Result<birdbone_host_api::Hessian, Error> {
        Err(Error::Invalid("no Hessians here".into()))
    }
    fn plan_values(&mut self, p: u32, _: TensorId, _: TensorId) -> Result<Planned, Error> {
        Ok(Planned::Prune {
            pruned: p as u64,
            what: "new values".into(),
        })
    }
}

fn info(index: u32, name: &str, shape: &[i64]) -> ParamInfo {
    ParamInfo {
        index,
        name: name.into(),
        role: role_of(name),
        shape: shape.to_vec().into(),
        numel: shape.iter().product::<i64>() as u64,
        dtype: DType::F32,
        device: Device {
            kind: DeviceKind::Cpu,
            index: 0,
        },
    }
}

/// Two 2x4 parameters; `a` holds the four smallest magnitudes of the eight.
fn driver() -> (PlanDriver<VecBackend>, RVec<ParamInfo>) {
    let infos: RVec<ParamInfo> = vec![
        info(0, "layers.0.a.weight", &[2, 4]),
        info(1, "layers.0.b.weight", &[2, 4]),
    ]
    .into();
    let backend = VecBackend {
        weights: vec![
            vec![0.1, -0.2, 0.3, -0.4, 0.05, 0.06, -0.07, 0.08],
            vec![1.0, -2.0, 3.0, 4.0, -5.0, 6.0, 7.0, 8.0],
        ],
        protected: vec![false, true],
    };
    (PlanDriver::new(backend, infos.clone()), infos)
}

/// A strategy's `select_k_smallest` call.
fn select(
    d: &mut PlanDriver<VecBackend>,
    params: &[u32],
    ks: &[u64],
    scope: SelectScope,
) -> RResult<RVec<Selection>, PluginError> {
    d.select_k_smallest(RSlice::from_slice(params), RSlice::from_slice(ks), scope)
}

fn message<T: std::fmt::Debug>(r: RResult<T, PluginError>) -> String {
    r.into_result()
        .expect_err("the driver must refuse this")
        .message
        .to_string()
}

#[test]
fn a_global_selection_counts_exactly_and_covers_only_its_parameters() {
    let (mut d, infos) = driver();
    let sel = select(&mut d, &[0, 1], &[5], SelectScope::Global)
        .into_result()
        .unwrap();
    assert_eq!((sel[0].pruned, sel[0].considered), (5, 16));
    // The fifth smallest magnitude of the sixteen is a's 0.1 (after 0.05, 0.06, 0.07, 0.08).
    assert_eq!(sel[0].threshold, 0.1f32 as f64);
    let only_a = select(&mut d, &[0], &[2], SelectScope::PerParam)
        .into_result()
        .unwrap();
    d.decide(
        0,
        Decision::Apply {
            selection: sel[0].id,
        },
    )
    .into_result()
    .unwrap();
    let e = message(d.decide(
        1,
        Decision::Apply {
            selection: only_a[0].id,
        },
    ));
    assert!(e.contains("does not cover 'layers.0.b.weight'"), "{e}");
    d.decide(
        1,
        Decision::Apply {
            selection: sel[0].id,
        },
    )
    .into_result()
    .unwrap();
    let e = message(d.decide(1, Decision::Keep));
    assert!(e.contains("already decided"), "{e}");
    // The quotas split the global count between the parameters: a gives 5, b none.
    let decided = all_decided(into_decisions(d), &infos, "test").unwrap();
    assert_eq!(
        decided,
        vec![
            Planned::Prune {
                pruned: 5,
                what: "selection 0".into()
            },
            Planned::Prune {
                pruned: 0,
                what: "selection 0".into()
            },
        ]
    );
}

#[test]
fn requests_that_do_not_fit_are_refused_with_the_reason() {
    let (mut d, _) = driver();
    let e = message(d.decide(7, Decision::Keep));
    assert!(
        e.contains("parameter index 7 is out of range (the pass has 2)"),
        "{e}"
    );
    let e = message(select(&mut d, &[0, 1], &[1], SelectScope::PerParam));
    assert!(e.contains("one count per parameter (1 for 2)"), "{e}");
    let e = message(select(&mut d, &[1], &[1], SelectScope::PerRow));
    assert!(e.contains("has protected rows"), "{e}");
    let e = message(d.decide(
        0,
        Decision::NM {
            pattern: NmPattern { n: 2, m: 3 },
        },
    ));
    assert!(
        e.contains("2:3 does not fit 'layers.0.a.weight' (rows of 4"),
        "{e}"
    );
    let e = message(d.decide(0, Decision::Apply { selection: 9 }));
    assert!(e.contains("there is no selection 9"), "{e}");
    // A fitting N:M pattern and a per-row selection plan what they prune.
    d.decide(
        0,
        Decision::NM {
            pattern: NmPattern { n: 1, m: 4 },
        },
    )
    .into_result()
    .unwrap();
    let rows = select(&mut d, &[0], &[3], SelectScope::PerRow)
        .into_result()
        .unwrap();
    assert_eq!(rows[0].pruned, 6);
}

#[test]
fn a_parameter_left_undecided_fails_the_pass_by_name() {
    let (mut d, infos) = driver();
    d.decide(0, Decision::Keep).into_result().unwrap();
    let e = all_decided(into_decisions(d), &infos, "lazy-strategy").unwrap_err();
    assert!(
        e.to_string()
            .contains("'lazy-strategy' failed on layers.0.b.weight")
            && e.to_string().contains("without deciding"),
        "{e}"
    );
}

/// The decisions so far, as a pass would take them after its strategy returned.
fn into_decisions(d: PlanDriver<VecBackend>) -> Vec<Option<Planned>> {
    d.into_outcome().decisions
}

/// ABI 1.1's proposals are decisions like the others: one per parameter, indices checked, and
/// the backend's refusal (no Hessians here) reported as the host's own error.
#[test]
fn proposed_values_are_one_decision_per_parameter() {
    let (mut d, infos) = driver();
    d.propose(0, TensorId(1), TensorId(2))
        .into_result()
        .unwrap();
    let e = message(d.propose(0, TensorId(1), TensorId(2)));
    assert!(e.contains("already decided"), "{e}");
    let e = message(d.propose(9, TensorId(1), TensorId(2)));
    assert!(e.contains("out of range"), "{e}");
    let e = message(d.hessian(1));
    assert!(e.contains("no Hessians here"), "{e}");
    d.decide(1, Decision::Keep).into_result().unwrap();
    let decided = all_decided(d.into_outcome().decisions, &infos, "s").unwrap();
    assert_eq!(
        decided[0],
        Planned::Prune {
            pruned: 0,
            what: "new values".into()
        }
    );
}
