#!/usr/bin/perl
# Verify every DKIM-Signature of a message with Perl's Mail::DKIM, the
# public keys coming from the command line instead of DNS:
#   verify_maildkim.pl MESSAGE selector._domainkey.domain=RECORD ...
# Prints one line per signature; exits 0 when all of them pass.
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS;

my $file = shift @ARGV;
my %records = map { my ($k, $v) = split /=/, $_, 2; (lc $k, $v) } @ARGV;

{
    no warnings 'redefine';
    *Mail::DKIM::DNS::query = sub {
        my ($name, $type) = @_;
        my $rec = $records{lc $name};
        return () unless defined $rec;
        my @parts = ($rec =~ /(.{1,250})/gs);
        my $rr = Net::DNS::RR->new(name => $name, type => 'TXT', txtdata => [@parts]);
        return ($rr);
    };
}

open my $fh, '<:raw', $file or die "$file: $!";
my $dkim = Mail::DKIM::Verifier->new();
while (my $line = <$fh>) {
    $dkim->PRINT($line);
}
close $fh;
$dkim->CLOSE();

my $n = 0;
my $bad = 0;
foreach my $sig ($dkim->signatures) {
    $n++;
    my $r = $sig->result;
    my $detail = $sig->result_detail;
    print "sig $n: $detail\n";
    $bad++ unless $r eq 'pass';
}
print "no signatures\n" unless $n;
exit(($n && !$bad) ? 0 : 1);
