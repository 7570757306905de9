use mllm_core::metrics::*;
use mllm_core::PageSet;
use mllm_core::synth::*;
use mllm_core::workingset::*;
fn main() {
    let items = 32768u32;
    let w = Workload::new(WorkloadClass::Phases.default_spec(), items, 1);
    let hist: Vec<Vec<u32>> = (0..90).map(|i| w.accesses(i)).collect();
    // hot set of phase p = pages accessed >= 3 times in that phase
    let phase_set = |p: usize| { let mut c = vec![0u32; items as usize]; for i in p*20..(p*20+20).min(90) { for &x in &hist[i] { c[x as usize]+=1; } } PageSet::from_items(items, &c.iter().enumerate().filter(|(_, &n)| n>=3).map(|(i,_)| i as u32).collect::<Vec<_>>()) };
    for kind in [EstimatorKind::Original, EstimatorKind::Improved] {
        let mut e = kind.build(items, 10);
        for t in 0..90usize {
            if t >= 30 && (t-30)%5==0 && t+10<=90 {
                let pred = e.predict(&Goal{horizon:10.0, objective: Objective::Accuracy});
                let fut: Vec<&[u32]> = hist[t..t+10].iter().map(|v| v.as_slice()).collect();
                let act = accessed_in(items, &fut);
                let c = Confusion::of(&pred, &act);
                let cur = phase_set(t/20); let prev = phase_set(t/20 - 1);
                let in_cur = pred.intersection_count(&cur); let in_prev = pred.intersection_count(&prev);
                if kind == EstimatorKind::Improved && t == 30 {
                    let mut shown = 0;
                    for x in pred.iter() { if !cur.contains(x) && !prev.contains(x) && shown < 8 {
                        shown += 1;
                        let times: Vec<usize> = (0..t).filter(|&i| hist[i].binary_search(&x).is_ok()).collect();
                        println!("   other {x}: times {:?} score {:.3}", times, e.score(x));
                    } }
                }
                println!("{:9} t={t} pred={} tp={} fp={} fn={} cur={} prev={} other={}", kind.name(), pred.count(), c.true_positives, c.false_positives, c.false_negatives, in_cur, in_prev, pred.count()-in_cur-in_prev);
            }
            e.observe(&hist[t]);
        }
    }
}
#[allow(dead_code)]
fn unused() {}
