//! Values the unit tests of several modules build on.

use fedtune_federation::RoundRecord;

/// An applied round `round` of `cohort`, two updates, no test evaluation, no failures.
pub(crate) fn round_record(round: u64, cohort: &[&str]) -> RoundRecord {
    serde_json::from_value(serde_json::json!({
        "round": round, "cohort": cohort, "updates": 2, "applied": true, "failures": [],
        "aggregation_error": null, "train_loss": 0.5, "federated_accuracy": 0.5,
        "federated_loss": 0.7, "agent_accuracy": {}, "server_learning_rate": null,
        "fairness": {"agents": 0, "mean_accuracy": 0.0, "accuracy_variance": 0.0,
            "accuracy_std": 0.0, "worst_accuracy": 0.0, "worst_10pct_accuracy": 0.0,
            "accuracy_gap": 0.0, "jain_index": 1.0, "mean_loss": 0.0, "participation_jain": 1.0},
        "violations": [], "test": null, "seconds": 0.3, "device_seconds": 0.4,
        "payload_bytes": 500
    }))
    .expect("a complete round record")
}
