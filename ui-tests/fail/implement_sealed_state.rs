// `State` is sealed: no state other than `Open` and `Done` can be added.

#[derive(Debug)]
struct Halfway;

impl pgtx::State for Halfway {}

fn main() {
    println!("{Halfway:?}");
}
