use mllm_sim::accuracy::*;
fn main() {
    let items: u32 = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(32768);
    let config = AccuracyConfig { items, intervals: 90, ..AccuracyConfig::default() };
    for r in table(&config) {
        println!("{:8} {:13} p={:.3} r={:.3} f1={:.3} n={:.0} {:.0}us", r.class, r.estimator, r.precision, r.recall, r.f1, r.predicted_items, r.predict_us);
    }
}
