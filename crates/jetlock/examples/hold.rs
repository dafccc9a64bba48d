//! Holds locks until Ctrl-C, renewing them: a way to watch a holder with
//! `jetlock locks` and to see a waiter queue behind it.
//!
//! ```sh
//! cargo run --example hold -- nats://127.0.0.1:4222 account:42 order:7
//! ```

use jetlock::ClientOptions;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or("usage: hold URL NAME...")?;
    let names: Vec<String> = args.collect();
    let client = ClientOptions::new()
        .name("hold-example")
        .connect(&url)
        .await?;
    let mut guards = Vec::new();
    for name in &names {
        let guard = client
            .lock(name)
            .owner(format!("hold-example:{name}"))
            .wait(Duration::from_secs(30))
            .acquire()
            .await?;
        println!("holding {name} with token {}", guard.token());
        guards.push(guard);
    }
    tokio::signal::ctrl_c().await?;
    for guard in guards {
        guard.release().await?;
    }
    Ok(())
}
