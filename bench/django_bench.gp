# gnuplot -e "dat='results/django_bench.dat'; out='results/django_bench.png'" bench/django_bench.gp
if (!exists("dat")) dat = 'django_bench.dat'
if (!exists("out")) out = 'django_bench.png'
set terminal pngcairo size 1000,520 noenhanced
set output out
set title "Django cache backends, 8 processes, 90/9/1 get/set/delete over 1,100 keys"
set style data histograms
set style histogram errorbars gap 2 lw 1
set style fill solid 0.6 border -1
set logscale y
set ylabel "microseconds per call (bar: median, whisker: p90..p99)"
set key top left
plot dat using 2:3:4:xtic(1) title "get", \
     ''  using 5:6:7 title "set", \
     ''  using 8:9:10 title "delete"
