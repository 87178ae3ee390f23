//! What a test does when something it needs from the machine is missing (a service such as Redis or a Celery
//! worker, a tool such as `promtool`, or the right to mount a tmpfs): with `FACILITATOR_REQUIRE_SERVICES=1`, which
//! `.ci/run` sets, it fails saying what to install; without it (a developer's machine) it prints a loud SKIPPED line
//! and the test returns. A CI run never skips.

/// The variable that turns a missing service into a failure.
pub const REQUIRE_VAR: &str = "FACILITATOR_REQUIRE_SERVICES";

/// Reports that `test` cannot run for lack of `what`: panics when services are required, else prints SKIPPED.
pub fn missing(test: &str, what: &str) {
    if std::env::var(REQUIRE_VAR).as_deref() == Ok("1") {
        panic!("{test}: {REQUIRE_VAR}=1 but missing: {what}");
    }
    eprintln!("\n*** SKIPPED {test}: missing {what} ***\n");
}
