/*
 * pid 1 of a pod's shared pid namespace: reaps orphans until SIGTERM or
 * SIGINT (the shim's SIGKILL also ends it), as a pause process does.
 *
 * The shim's namespace holder forks it and it execs this program from a
 * sealed memfd (the shim carries it, see build.rs), so pid 1 holds no copy
 * of the shim's memory: a fork alone kept every page the shim wrote after
 * the fork, about 56 KiB of anonymous memory and 500 KiB of mapped pages per
 * pod. Built freestanding (no libc, no dynamic loader) with raw system
 * calls, it is one page of text and a stack.
 */
#include <asm/unistd.h>

#define SIGINT 2
#define SIGTERM 15
#define SIGCHLD 17
#define WNOHANG 1
#define PR_SET_NAME 15

static long sys(long n, long a, long b, long c, long d, long e)
{
	long ret;
#if defined(__x86_64__)
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
			 : "rcx", "r11", "memory");
#elif defined(__aarch64__)
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	register long x3 __asm__("x3") = d;
	register long x4 __asm__("x4") = e;
	__asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4) : "memory");
	ret = x0;
#else
#error "pod_init.c: no system call sequence for this architecture"
#endif
	return ret;
}

#if defined(__x86_64__)
__attribute__((force_align_arg_pointer))
#endif
__attribute__((noreturn)) void _start(void)
{
	unsigned long set = (1UL << (SIGCHLD - 1)) | (1UL << (SIGTERM - 1)) | (1UL << (SIGINT - 1));
	/* Named as the shim, whose pod init berthd knows it to be. */
	sys(__NR_prctl, PR_SET_NAME, (long)"berth-shim", 0, 0, 0);
	/* Nothing inherited (the memfd, pipes) stays open for the pod's life. */
	sys(__NR_close_range, 3, ~0U, 0, 0, 0);
	/* rt_sigprocmask(SIG_BLOCK), then take the signals one at a time. */
	sys(__NR_rt_sigprocmask, 0, (long)&set, 0, sizeof(set), 0);
	for (;;) {
		long sig = sys(__NR_rt_sigtimedwait, (long)&set, 0, 0, sizeof(set), 0);
		if (sig == SIGCHLD) {
			while (sys(__NR_wait4, -1, 0, WNOHANG, 0, 0) > 0)
				;
		} else if (sig == SIGTERM || sig == SIGINT) {
			sys(__NR_exit_group, 0, 0, 0, 0, 0);
		}
	}
}
