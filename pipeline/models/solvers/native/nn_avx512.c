/* the AVX-512 variant: 16 floats per vector (setup.py) */
#define VW 16
#include "nn_kernel.c"
