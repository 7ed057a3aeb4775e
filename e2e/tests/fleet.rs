//! A fleet of sidecar processes watching one ServiceLog: a rule change reaches every one
//! of them and the status says so. (`make bench` runs the same with 100 sidecars and
//! reports the latency.)

use servicelog_e2e::{TestEnv, fleet::Fleet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_20_sidecars_when_a_rule_is_patched_then_all_apply_it_and_status_says_20_of_20() {
    let env =
        TestEnv::shared().unwrap_or_else(|e| panic!("the test environment did not start: {e}"));
    let mut fleet = Fleet::start(env, 20)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..3 {
        let took = fleet
            .patch_and_wait()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("kubectl patch → applied 20/20 in {took:?}");
    }
    assert!(
        fleet.sidecars.iter_mut().all(|s| s.proc.exited().is_none()),
        "a sidecar died during the rule changes"
    );
}
