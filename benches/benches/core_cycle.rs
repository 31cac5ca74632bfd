//! The core alone: a full session cycle through the machine with answers prepared in
//! advance (no fake broker logic in the timed loop, no IO).
//!
//! - IG v3: login → 10 refreshes → logout (12 requests).
//! - IBKR gateway: status → init (→ status poll, accounts) → 10 tickles → logout.
//!
//! - `IbkrSession::new`, from its own configuration and from a shared one; the
//!   gateway's `/sso/validate` answer decoded alone.
//!
//! - IG answers alone: decoding the v3 login answer and the `GET /session` answer the
//!   fake broker gave (`responses::login_v3`, `responses::read_session`).
//!
//! Before the timings it prints the allocations of one cycle, request by request.
//! Run: `cargo bench -p broker-session-benches --bench core_cycle`.

use std::sync::Arc;

use broker_session::ibkr::IbkrConfig;
use broker_session::ibkr::{IbkrIntent, IbkrOutcome, IbkrSession, IbkrState};
use broker_session::ig::IgConfig;
use broker_session::ig::{IgIntent, IgOutcome, IgSession, IgState, LoginFlow, responses};
use broker_session::{Event, Machine, Output, RngSeed, Transmit};
use broker_session_benches::alloc::{self, AllocDelta, CountingAlloc};
use broker_session_benches::replay::Script;
use broker_session_benches::sys;
use broker_session_testkit::ibkr::FakeIbkr;
use broker_session_testkit::ig::{FakeIg, session_config};
use broker_session_testkit::sim::VirtualClock;
use divan::Bencher;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const REFRESHES: usize = 10;
const TICKLES: usize = 10;

fn ig_intents() -> Vec<IgIntent> {
    let mut v = vec![IgIntent::Login];
    v.extend((0..REFRESHES).map(|_| IgIntent::Refresh));
    v.push(IgIntent::Logout);
    v
}

fn ibkr_intents() -> Vec<IbkrIntent> {
    let mut v = vec![
        IbkrIntent::CheckStatus,
        IbkrIntent::InitBrokerage { compete: None },
    ];
    v.extend((0..TICKLES).map(|_| IbkrIntent::Tickle));
    v.push(IbkrIntent::Logout);
    v
}

struct Ig {
    script: Script,
    config: IgConfig,
    clock: VirtualClock,
}

impl Ig {
    fn new() -> Self {
        let mut fake = FakeIg::default();
        let config = session_config(&fake, LoginFlow::V3);
        let clock = VirtualClock::new();
        let mut m = IgSession::new(config.clone(), RngSeed::from_u64(1), clock.now())
            .expect("valid config");
        let script = Script::record(&mut m, &mut fake, clock.now(), ig_intents());
        Self {
            script,
            config,
            clock,
        }
    }

    fn machine(&self) -> IgSession {
        IgSession::new(self.config.clone(), RngSeed::from_u64(1), self.clock.now())
            .expect("valid config")
    }
}

/// The bodies of a v3 login answer and a session-read answer, as the fake broker
/// gives them.
struct IgAnswers {
    login: http::Response<Vec<u8>>,
    read: http::Response<Vec<u8>>,
}

impl IgAnswers {
    fn new() -> Self {
        let mut fake = FakeIg::default();
        let config = session_config(&fake, LoginFlow::V3);
        let clock = VirtualClock::new();
        let mut m =
            IgSession::new(config, RngSeed::from_u64(1), clock.now()).expect("valid config");
        let intents = vec![
            IgIntent::Login,
            IgIntent::ReadSession {
                fetch_tokens: false,
            },
        ];
        let script = Script::record(&mut m, &mut fake, clock.now(), intents);
        Self {
            login: script.response(0),
            read: script.response(1),
        }
    }

    /// Decodes both once; `false` if either fails.
    fn decode(&self) -> bool {
        let login = responses::login_v3(divan::black_box(self.login.body()));
        let read = responses::read_session(
            divan::black_box(self.read.headers()),
            divan::black_box(self.read.body()),
        );
        login.is_ok() && read.is_ok()
    }
}

struct Ibkr {
    script: Script,
    config: IbkrConfig,
    clock: VirtualClock,
}

impl Ibkr {
    fn new() -> Self {
        let mut fake = FakeIbkr::gateway();
        let config = FakeIbkr::gateway_config();
        let clock = VirtualClock::new();
        let mut m = IbkrSession::new(config.clone(), RngSeed::from_u64(1), clock.now())
            .expect("valid config");
        let script = Script::record(&mut m, &mut fake, clock.now(), ibkr_intents());
        Self {
            script,
            config,
            clock,
        }
    }

    fn machine(&self) -> IbkrSession {
        IbkrSession::new(self.config.clone(), RngSeed::from_u64(1), self.clock.now())
            .expect("valid config")
    }
}

fn print_profile(name: &str, rows: &[broker_session_benches::replay::RequestAllocs]) {
    println!("\n{name}: allocations per request in one cycle (count / bytes)");
    println!(
        "  {:<36} {:>16} {:>22}",
        "request", "build request", "answer + transitions"
    );
    let mut total = AllocDelta::default();
    for r in rows {
        println!(
            "  {:<36} {:>7} / {:>6} {:>11} / {:>8}",
            r.request, r.encode.allocs, r.encode.bytes, r.decode.allocs, r.decode.bytes
        );
        total += r.encode;
        total += r.decode;
    }
    println!(
        "  {:<36} {:>7} allocations, {} bytes per cycle ({} requests)",
        "total",
        total.allocs,
        total.bytes,
        rows.len()
    );
}

/// `BENCH_ONLY=ig|ibkr BENCH_ITERS=n`: run n cycles and exit, for instruction counts
/// under `valgrind --tool=callgrind` (see BENCHMARKS.md); `ig-setup`/`ibkr-setup` do
/// the same set-up (machine, answers) without the replay, to subtract.
fn cycles_only() -> bool {
    let (Ok(only), Ok(iters)) = (std::env::var("BENCH_ONLY"), std::env::var("BENCH_ITERS")) else {
        return false;
    };
    let iters: usize = iters.parse().unwrap_or(1);
    let mut ok = 0;
    match only.as_str() {
        "ig" => {
            let ig = Ig::new();
            for _ in 0..iters {
                ok += ig
                    .script
                    .replay(&mut ig.machine(), ig_intents(), ig.script.responses());
            }
        }
        "ibkr" => {
            let b = Ibkr::new();
            for _ in 0..iters {
                ok += b
                    .script
                    .replay(&mut b.machine(), ibkr_intents(), b.script.responses());
            }
        }
        // The same set-up without the replay, to subtract.
        "ig-setup" => {
            let ig = Ig::new();
            for _ in 0..iters {
                std::hint::black_box((ig.machine(), ig_intents(), ig.script.responses()));
            }
        }
        "ibkr-setup" => {
            let b = Ibkr::new();
            for _ in 0..iters {
                std::hint::black_box((b.machine(), ibkr_intents(), b.script.responses()));
            }
        }
        // The v3 login and session-read answers decoded alone.
        "ig-answers" => {
            let a = IgAnswers::new();
            for _ in 0..iters {
                ok += usize::from(a.decode());
            }
        }
        "ig-answers-setup" => {
            let a = IgAnswers::new();
            std::hint::black_box(&a);
        }
        other => panic!(
            "BENCH_ONLY={other}: ig, ibkr, ig-answers, ig-setup, ibkr-setup or ig-answers-setup"
        ),
    }
    println!("{ok} operations");
    true
}

fn main() {
    if cycles_only() {
        return;
    }
    println!("machine: {}", sys::machine_line());
    alloc::set_counting(true);
    let ig = Ig::new();
    let rows = ig
        .script
        .profile(&mut ig.machine(), ig_intents(), ig.script.responses());
    print_profile("IG v3 login → 10 refreshes → logout", &rows);

    let ibkr = Ibkr::new();
    let rows = ibkr
        .script
        .profile(&mut ibkr.machine(), ibkr_intents(), ibkr.script.responses());
    print_profile("IBKR gateway status → init → 10 tickles → logout", &rows);

    // Stamping an application request (the per-request path after login).
    let mut m = ig.machine();
    let n_login = 1;
    let login_answers = (0..n_login).map(|i| ig.script.response(i)).collect();
    ig.script
        .replay(&mut m, vec![IgIntent::Login], login_answers);
    let mut req = app_request();
    let now = ig.clock.now();
    let _stamp = m.authorize(&mut req, now).expect("stamped");
    let before = alloc::snapshot();
    let _stamp = m.authorize(&mut req, now).expect("stamped");
    let d = alloc::snapshot().since(before);
    println!(
        "\nIG v3 authorize (stamp Authorization, IG-ACCOUNT-ID, X-IG-API-KEY on an app request): {} allocations, {} bytes",
        d.allocs, d.bytes
    );

    // Decoding the v3 login and session-read answers alone.
    let answers = IgAnswers::new();
    for (name, r) in [
        ("v3 login", &answers.login),
        ("session read", &answers.read),
    ] {
        let before = alloc::snapshot();
        let ok = if std::ptr::eq(r, &answers.login) {
            responses::login_v3(r.body()).is_ok()
        } else {
            responses::read_session(r.headers(), r.body()).is_ok()
        };
        let d = alloc::snapshot().since(before);
        assert!(ok, "the {name} answer decodes");
        println!(
            "IG {name} answer ({} B body) decoded: {} allocations, {} bytes",
            r.body().len(),
            d.allocs,
            d.bytes
        );
    }

    // What one canned answer costs to copy (the input side, outside the timed loop).
    let before = alloc::snapshot();
    let responses = ig.script.responses();
    let d = alloc::snapshot().since(before);
    drop(responses);
    println!(
        "\n(outside the timed loop) copying the {} canned IG answers: {} allocations, {} bytes",
        ig.script.requests.len(),
        d.allocs,
        d.bytes
    );
    machine_state(&ig, &ibkr);
    alloc::set_counting(false);
    println!();
    divan::main();
}

/// Machine state per session: `size_of` plus the heap it holds, averaged over 1,000
/// sessions, once created and after an IG v3 login or an IBKR gateway connect: each
/// built from its own copy of the configuration (separate users), then all from one
/// shared `Arc` of it. Also the sizes of the values a machine keeps or hands out.
fn machine_state(ig: &Ig, ibkr: &Ibkr) {
    const K: usize = 1000;
    // Live heap per session (created, after login), `config` giving each its
    // configuration.
    let ig_heap = |config: &dyn Fn() -> Arc<IgConfig>| {
        let mut igs = Vec::with_capacity(K);
        let before = alloc::snapshot();
        for _ in 0..K {
            igs.push(
                IgSession::new(config(), RngSeed::from_u64(1), ig.clock.now())
                    .expect("valid config"),
            );
        }
        let created = alloc::snapshot().since(before).live as f64 / K as f64;
        for m in &mut igs {
            ig.script
                .replay(m, vec![IgIntent::Login], vec![ig.script.response(0)]);
        }
        let active = alloc::snapshot().since(before).live as f64 / K as f64;
        (created, active)
    };
    let connect: Vec<usize> = (0..ibkr.script.requests.len())
        .filter(|i| !ibkr.script.requests[*i].ends_with("/tickle"))
        .collect();
    let ibkr_heap = |config: &dyn Fn() -> Arc<IbkrConfig>| {
        let mut ibkrs = Vec::with_capacity(K);
        let before = alloc::snapshot();
        for _ in 0..K {
            ibkrs.push(
                IbkrSession::new(config(), RngSeed::from_u64(1), ibkr.clock.now())
                    .expect("valid config"),
            );
        }
        let created = alloc::snapshot().since(before).live as f64 / K as f64;
        for m in &mut ibkrs {
            let answers = connect.iter().map(|i| ibkr.script.response(*i)).collect();
            ibkr.script.replay(m, vec![IbkrIntent::Connect], answers);
        }
        let active = alloc::snapshot().since(before).live as f64 / K as f64;
        (created, active)
    };
    let (ig_own, ibkr_own) = (
        ig_heap(&|| Arc::new(ig.config.clone())),
        ibkr_heap(&|| Arc::new(ibkr.config.clone())),
    );
    let (ig_shared, ibkr_shared) = {
        let (igc, ibkrc) = (Arc::new(ig.config.clone()), Arc::new(ibkr.config.clone()));
        (ig_heap(&|| igc.clone()), ibkr_heap(&|| ibkrc.clone()))
    };
    println!("\nmachine state per session (size_of + live heap, mean of {K}):");
    println!(
        "  {:<36} {:>8} {:>22} {:>22}",
        "", "size_of", "heap created: own/shared", "heap active: own/shared"
    );
    let row = |name: &str, size: usize, own: (f64, f64), shared: (f64, f64)| {
        println!(
            "  {name:<36} {size:>8} {:>13.0} / {:>6.0} {:>13.0} / {:>6.0}   total active {:.0} / {:.0} B",
            own.0,
            shared.0,
            own.1,
            shared.1,
            size as f64 + own.1,
            size as f64 + shared.1
        );
    };
    row(
        "IgSession (v3, logged in)",
        size_of::<IgSession>(),
        ig_own,
        ig_shared,
    );
    row(
        "IbkrSession (gateway, connected)",
        size_of::<IbkrSession>(),
        ibkr_own,
        ibkr_shared,
    );
    println!(
        "  sizes: IG Output {} (Transmit {}, Event {}), IgOutcome {}, IgState {}; IBKR Event {}, IbkrOutcome {}; IgConfig {}, IbkrConfig {}",
        size_of::<Output<IgState, IgOutcome>>(),
        size_of::<Transmit>(),
        size_of::<Event<IgState, IgOutcome>>(),
        size_of::<IgOutcome>(),
        size_of::<IgState>(),
        size_of::<Event<IbkrState, IbkrOutcome>>(),
        size_of::<IbkrOutcome>(),
        size_of::<IgConfig>(),
        size_of::<IbkrConfig>(),
    );
}

/// One IG v3 cycle: 12 requests through a machine built beforehand.
#[divan::bench(max_time = 3)]
fn ig_v3_cycle(bencher: Bencher<'_, '_>) {
    let ig = Ig::new();
    bencher
        .with_inputs(|| (ig.machine(), ig_intents(), ig.script.responses()))
        .bench_local_values(|(mut m, intents, responses)| {
            let ok = ig.script.replay(&mut m, intents, responses);
            assert_eq!(ok, ig.script.ops);
            m
        });
}

/// One IBKR gateway cycle through a machine built beforehand.
#[divan::bench(max_time = 3)]
fn ibkr_gateway_cycle(bencher: Bencher<'_, '_>) {
    let ibkr = Ibkr::new();
    bencher
        .with_inputs(|| (ibkr.machine(), ibkr_intents(), ibkr.script.responses()))
        .bench_local_values(|(mut m, intents, responses)| {
            let ok = ibkr.script.replay(&mut m, intents, responses);
            assert_eq!(ok, ibkr.script.ops);
            m
        });
}

fn app_request() -> http::Request<Vec<u8>> {
    http::Request::get("https://fake-ig.test/gateway/deal/accounts")
        .header("Version", "1")
        .body(Vec::new())
        .expect("valid")
}

/// `authorize` of an application request on a logged-in IG v3 session.
#[divan::bench(max_time = 1)]
fn ig_v3_authorize(bencher: Bencher<'_, '_>) {
    let ig = Ig::new();
    let mut m = ig.machine();
    ig.script
        .replay(&mut m, vec![IgIntent::Login], vec![ig.script.response(0)]);
    let mut req = app_request();
    let now = ig.clock.now();
    bencher.bench_local(|| m.authorize(divan::black_box(&mut req), now));
}

/// Decoding an IG v3 login answer and a session-read answer (both, one after the
/// other).
#[divan::bench(max_time = 1)]
fn ig_decode_login_and_read(bencher: Bencher<'_, '_>) {
    let a = IgAnswers::new();
    bencher.bench_local(|| assert!(a.decode()));
}

/// Building an IG session (config validation), for scale.
#[divan::bench(max_time = 1)]
fn ig_new_session(bencher: Bencher<'_, '_>) {
    let ig = Ig::new();
    bencher
        .with_inputs(|| ig.config.clone())
        .bench_local_values(|c| IgSession::new(c, RngSeed::from_u64(1), ig.clock.now()));
}

/// Building an IBKR gateway session from its own configuration (each session a
/// separate copy: the base URL parsed and the endpoint URIs built every time).
#[divan::bench(max_time = 1)]
fn ibkr_new_session(bencher: Bencher<'_, '_>) {
    let ibkr = Ibkr::new();
    bencher
        .with_inputs(|| ibkr.config.clone())
        .bench_local_values(|c| IbkrSession::new(c, RngSeed::from_u64(1), ibkr.clock.now()));
}

/// Building an IBKR gateway session from one `Arc<IbkrConfig>` shared by every session
/// (what a program making many sessions from one template does).
#[divan::bench(max_time = 1)]
fn ibkr_new_session_shared(bencher: Bencher<'_, '_>) {
    let ibkr = Ibkr::new();
    let shared = Arc::new(ibkr.config.clone());
    bencher
        .with_inputs(|| Arc::clone(&shared))
        .bench_local_values(|c| IbkrSession::new(c, RngSeed::from_u64(1), ibkr.clock.now()));
}

/// Decoding the gateway's `/sso/validate` answer (the fake broker's, the shape IBKR's
/// documentation shows), the answer of the loopback IBKR cycle's last request.
#[divan::bench(max_time = 1)]
fn ibkr_decode_validate(bencher: Bencher<'_, '_>) {
    const BODY: &[u8] = br#"{"AUTH_TIME":1702580846836,"CREDENTIAL":"testuser1","EXPIRES":415890,"IP":"12.345.678.901","IS_FREE_TRIAL":false,"IS_MASTER":false,"LANDING_APP":"UNIVERSAL","LOGIN_TYPE":2,"PAPER_USER_NAME":"testuser1","QUALIFIED_FOR_MOBILE_AUTH":null,"RESULT":true,"SF_ENABLED":false,"USER_ID":123456789,"USER_NAME":"testuser1","features":{"bond":true,"calendar":true,"env":"PROD","newMf":true,"optionChains":true,"realtime":true,"wlms":true},"lastAccessed":1702582037124,"region":"NJ"}"#;
    bencher.bench_local(|| {
        broker_session::ibkr::responses::validate(divan::black_box(BODY)).expect("valid answer")
    });
}
