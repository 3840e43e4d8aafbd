fn main() {
    println!("umbra");
}
