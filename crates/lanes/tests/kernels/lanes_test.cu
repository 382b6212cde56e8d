// Test kernels of the lanes crate (tests/cuda_backend.rs, tests/cuda_graphs.rs).
extern "C" __global__ void spin_fill(float* x, unsigned int n, float v, long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) x[i] = v;
}

extern "C" __global__ void scale(float* y, const float* x, float a, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i];
}

extern "C" __global__ void empty() { }
