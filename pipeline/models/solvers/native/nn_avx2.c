/* the AVX2 + FMA variant: 8 floats per vector (setup.py) */
#define VW 8
#include "nn_kernel.c"
