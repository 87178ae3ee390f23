//! Turns a path of the model (a counterexample, or any discovery) into a scenario file of `states/scenarios/`.
//!
//! Owns the printing only: the path is replayed through [`McModel::apply`], which records every input it feeds the
//! machine with its logical time, so the scenario's inputs are exactly the ones the checker fed. Must never guess
//! an input: a step of the model that feeds nothing (the clock moving short of a deadline, the facilitator
//! reading a frame) leaves no step in the scenario, and the next input carries the time.

use serde_json::{Value, json};

use crate::model::{Act, Fed, McModel, McState};

/// A path replayed: the inputs fed, in order, and the last state.
pub struct Replayed {
    /// Every input fed, with its time and what the machine did.
    pub fed: Vec<Fed>,
    /// The state the path ends in.
    pub last: McState,
}

/// Replays `actions` from the model's initial state.
pub fn replay(model: &McModel, actions: &[Act]) -> Replayed {
    use stateright::Model;
    let mut state = model.init_states().remove(0);
    let mut fed = Vec::new();
    for (i, act) in actions.iter().enumerate() {
        match model.apply(&state, *act, Some(&mut fed)) {
            Some(next) => state = next,
            None => panic!(
                "step {i} of the path ({act:?}) does not apply on replay; so far:\n{}",
                trace(&Replayed { fed, last: state })
            ),
        }
    }
    Replayed { fed, last: state }
}

/// The scenario file for a path: the model's configuration as `config`, each input fed as a step with
/// `"state": null`, ready for `UPDATE_SCENARIOS=1 cargo test --test scenarios` to fill in the expectations from
/// the machine as it is then (the fixed one: blessing is not reviewing).
pub fn scenario(model: &McModel, replayed: &Replayed, name: &str, description: &str) -> Value {
    let steps: Vec<Value> = replayed
        .fed
        .iter()
        .map(|f| json!({"at": f.at_ms, "input": f.feed.to_json(), "state": null}))
        .collect();
    json!({
        "name": name,
        "description": description,
        "config": model.bounds.scenario_config(),
        "steps": steps,
    })
}

/// What the machine did on the path, one line per input: for reading a counterexample.
pub fn trace(replayed: &Replayed) -> String {
    replayed
        .fed
        .iter()
        .map(|f| {
            format!(
                "{:>6} ms  {:<40} -> {:<12} {}",
                f.at_ms,
                f.feed.to_json().to_string(),
                f.state,
                f.actions.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
