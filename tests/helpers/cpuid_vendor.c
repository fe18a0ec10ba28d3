/* Show a process, and every program it starts, another CPU vendor: the vendor-flip test
 * (tests/test_vendor_flip.py) builds this with the system C compiler and preloads it.
 *
 * OWDFA_CPUID_VENDOR=amd|intel makes CPUID leaf 0 answer "AuthenticAMD" / "GenuineIntel" and leaf 1
 * a family of that vendor (AMD 0x17, the Zen 1 EPYC's; Intel 6); every other answer, the ISA flags
 * included, stays the real CPU's. So the libraries that choose their code by vendor (MKL) take the
 * other vendor's path on the same instructions: a detector of vendor dependence, not an emulator.
 *
 * Linux can make CPUID fault in one thread and its children (arch_prctl ARCH_SET_CPUID, CPU flag
 * cpuid_fault). Each fault lands in a SIGSEGV handler that lets CPUID through for one call, edits
 * the answer and steps over the two-byte instruction. A fault at any other instruction is handed
 * to whatever handler was installed before this one. exec resets the faulting, and the loader
 * preloads this library again in the new program, which turns it back on.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012

struct answer {
    uint32_t eax, ebx, ecx, edx;
};

static const char *shown_vendor; /* 12 characters, or NULL: nothing to change */
static uint32_t shown_family;
static struct sigaction earlier_handler;

static void cpuid_faulting(int on)
{
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1);
}

static struct answer real_cpuid(uint32_t leaf, uint32_t subleaf)
{
    struct answer a;
    cpuid_faulting(0);
    __asm__ volatile("cpuid" : "=a"(a.eax), "=b"(a.ebx), "=c"(a.ecx), "=d"(a.edx) : "a"(leaf), "c"(subleaf));
    cpuid_faulting(1);
    return a;
}

/* Leaf 1's EAX holds the family as a base (bits 8-11) plus, at base 15, an extension (bits 20-27). */
static uint32_t with_family(uint32_t eax, uint32_t family)
{
    uint32_t base = family < 15 ? family : 15, extended = family < 15 ? 0 : family - 15;
    return (eax & ~(0xFu << 8) & ~(0xFFu << 20)) | (base << 8) | (extended << 20);
}

static void on_fault(int signal_number, siginfo_t *info, void *context)
{
    (void)signal_number;
    (void)info;
    greg_t *registers = ((ucontext_t *)context)->uc_mcontext.gregs;
    const unsigned char *at = (const unsigned char *)registers[REG_RIP];
    if (at[0] != 0x0F || at[1] != 0xA2) { /* not CPUID: the fault is real; let it fault again */
        sigaction(SIGSEGV, &earlier_handler, NULL);
        return;
    }
    uint32_t leaf = (uint32_t)registers[REG_RAX], subleaf = (uint32_t)registers[REG_RCX];
    struct answer a = real_cpuid(leaf, subleaf);
    if (leaf == 0) { /* the vendor string is EBX, EDX, ECX in that order */
        memcpy(&a.ebx, shown_vendor, 4);
        memcpy(&a.edx, shown_vendor + 4, 4);
        memcpy(&a.ecx, shown_vendor + 8, 4);
    } else if (leaf == 1) {
        a.eax = with_family(a.eax, shown_family);
    }
    registers[REG_RAX] = a.eax;
    registers[REG_RBX] = a.ebx;
    registers[REG_RCX] = a.ecx;
    registers[REG_RDX] = a.edx;
    registers[REG_RIP] += 2;
}

/* For the test: the vendor string a CPUID instruction of this process reads (13 bytes with the NUL). */
void cpuid_vendor_seen(char out[13])
{
    uint32_t eax, ebx, ecx, edx;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(0), "c"(0));
    memcpy(out, &ebx, 4);
    memcpy(out + 4, &edx, 4);
    memcpy(out + 8, &ecx, 4);
    out[12] = '\0';
}

__attribute__((constructor)) static void start(void)
{
    const char *wanted = getenv("OWDFA_CPUID_VENDOR");
    if (wanted == NULL || *wanted == '\0')
        return;
    if (strcmp(wanted, "amd") == 0) {
        shown_vendor = "AuthenticAMD";
        shown_family = 0x17;
    } else if (strcmp(wanted, "intel") == 0) {
        shown_vendor = "GenuineIntel";
        shown_family = 6;
    } else {
        fprintf(stderr, "cpuid_vendor: OWDFA_CPUID_VENDOR must be amd or intel, not '%s'\n", wanted);
        _exit(2);
    }
    struct sigaction handler;
    memset(&handler, 0, sizeof handler);
    handler.sa_sigaction = on_fault;
    handler.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &handler, &earlier_handler);
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "cpuid_vendor: this CPU or kernel cannot make CPUID fault; the vendor is not changed\n");
        sigaction(SIGSEGV, &earlier_handler, NULL);
    }
}
