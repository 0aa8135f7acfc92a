# Hermes: the two commands a new user needs are `make run` and `make test`.
.PHONY: run test build lint fmt bench fuzz deps clean deploy-test lab

run: ## Build and start Redis, all services and Caddy; prints the URL to open. Ctrl-C stops all.
	@scripts/run.sh

test: ## fmt check, clippy -D warnings, every test (unit, scenario, interop, browser, deploy checks)
	@scripts/test.sh

deploy-test: ## Build the images, run docker-compose.yml (podman) with browser calls through it (part of `make test`)
	@scripts/deploy/compose-test.sh

lab: ## Only the network lab: real calls across NATs and firewalls in network namespaces (as root; LAB_ROWS=a,b for some rows)
	@scripts/lab.sh

deps: ## Install missing system packages (as root) and the Python venv
	@scripts/install-deps.sh

build:
	cargo build --workspace --locked

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

fmt:
	cargo fmt --all

bench: ## Benchmarks side by side with their reference; BENCH=name runs one (scripts/bench/<name>.sh)
	@scripts/bench.sh $(BENCH)

fuzz: ## Short fuzzing runs of the parsers
	@scripts/fuzz.sh

clean:
	cargo clean
	rm -rf .run test-output
