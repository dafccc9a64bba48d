# The commands of the README, and the checks CI runs.
.PHONY: demo dev test check bench nats-server

# Installs nats-server (project-local), builds jetlock and runs the main
# job on the embedded default: payment worker processes move money between
# accounts under locks, and the run ends with invariant checks.
demo: nats-server
	cargo run --release --quiet -p jetlock-cli -- demo

# Installs nats-server (project-local), builds jetlock and runs the embedded
# default: a local nats-server, the locks bucket and a walk-through.
dev: nats-server
	cargo run --release --quiet -p jetlock-cli -- dev

# Installs nats-server and runs every test of every crate (unit, property,
# integration against real single-node and 3-node servers, CLI, doc tests),
# then the deterministic simulation's short seed range (a feature of the
# coordinator crate: its maps hash with fixed keys there; asked for across
# the workspace so the dependencies keep the features of the build before
# and only the coordinator is built again).
test: nats-server
	cargo test --locked --workspace
	cargo test --locked --workspace --features jetlock-coordinator/sim --test sim

# Formatting and lints, as CI runs them.
check:
	cargo fmt --all --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo clippy --locked --workspace --all-targets --features jetlock-coordinator/sim -- -D warnings

# The performance suite of the README (about 5 minutes on 2 cores: 307 s in
# the run the README reports); with the peers feature it also measures
# Redis, PostgreSQL and etcd where they are installed (`bash bench/peers.sh`
# installs them).
bench: nats-server
	cargo run --release --quiet -p jetlock-cli --features peers -- bench

nats-server:
	@bash nats/install.sh >/dev/null
