fn main() {
    // Placeholder until the gateway lands (issue 4).
}
