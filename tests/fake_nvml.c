/* A stand-in for the driver's libnvidia-ml.so.1 with the calls retia's GPU guard makes, so its
 * ctypes binding runs for real on a machine without a GPU. FAKE_NVML_STATE names a file whose line
 * N describes device N: "USED_BYTES [PID:BYTES ...]"; without the variable, nvmlInit fails. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { unsigned long long total, free, used; } memory_t;
typedef struct { unsigned int pid; unsigned long long used; unsigned int gi, ci; } process_t;

#define TOTAL (80ULL << 30)
#define MAX_LISTED 64

static int device_line(unsigned int index, char *line, size_t size) {
    const char *path = getenv("FAKE_NVML_STATE");
    FILE *f = path ? fopen(path, "r") : NULL;
    int found = 0;
    if (!f) return 0;
    for (unsigned int i = 0; fgets(line, (int)size, f); i++)
        if (i == index) { found = 1; break; }
    fclose(f);
    return found;
}

int nvmlInit_v2(void) { return getenv("FAKE_NVML_STATE") ? 0 : 9; /* DRIVER_NOT_LOADED */ }

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **handle) {
    char line[4096];
    if (!device_line(index, line, sizeof line)) return 2; /* INVALID_ARGUMENT */
    *handle = (void *)(size_t)(index + 1);
    return 0;
}

int nvmlDeviceGetMemoryInfo(void *handle, memory_t *memory) {
    char line[4096];
    if (!device_line((unsigned int)(size_t)handle - 1, line, sizeof line)) return 2;
    memory->used = strtoull(line, NULL, 10);
    memory->total = TOTAL;
    memory->free = TOTAL - memory->used;
    return 0;
}

int nvmlDeviceGetComputeRunningProcesses_v3(void *handle, unsigned int *count, process_t *infos) {
    char line[4096];
    process_t listed[MAX_LISTED];
    unsigned int n = 0;
    if (!device_line((unsigned int)(size_t)handle - 1, line, sizeof line)) return 2;
    int first = 1;
    for (char *tok = strtok(line, " \n"); tok; tok = strtok(NULL, " \n"), first = 0) {
        char *colon = strchr(tok, ':');
        if (first || !colon || n == MAX_LISTED) continue;
        listed[n].pid = (unsigned int)strtoul(tok, NULL, 10);
        listed[n].used = strtoull(colon + 1, NULL, 10);
        listed[n].gi = listed[n].ci = 0xFFFFFFFF;
        n++;
    }
    if (n > *count) { *count = n; return 7; /* INSUFFICIENT_SIZE */ }
    memcpy(infos, listed, n * sizeof *listed);
    *count = n;
    return 0;
}
