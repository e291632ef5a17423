//! `ca-bundle COUNT [FILE...]`: prints the PEM files given, then COUNT
//! more self-signed CA certificates, each with a subject of its own: the
//! large `--discount-ca` of `scripts/bench.sh`'s `sighup` scenario, with
//! the CA that really signed discount's certificate among them.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(count) = args.first().and_then(|count| count.parse::<usize>().ok()) else {
        eprintln!(
            "usage: ca-bundle COUNT [FILE...]\n\nPrints the PEM files given, then COUNT self-signed CA certificates (one key pair, distinct subjects)."
        );
        return ExitCode::from(2);
    };
    let mut out = Vec::new();
    for file in &args[1..] {
        match std::fs::read(file) {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(error) => {
                eprintln!("ca-bundle: {file}: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    match testkit::pki::ca_bundle(count) {
        Ok(bundle) => out.extend_from_slice(bundle.as_bytes()),
        Err(error) => {
            eprintln!("ca-bundle: {error}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(error) = std::io::stdout().write_all(&out) {
        eprintln!("ca-bundle: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
